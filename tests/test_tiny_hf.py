"""The offline llava-hf tiny checkpoints (llava_avc.testing.tiny_hf) against transformers' own classes.

Runs on transformers 4.57 (.venv-457) and 5.x (.venv-hf, where `llava` is not installed: nothing
here imports it). On transformers 4.37 (.venv) the whole module is skipped (one skip), because
that version's Llava classes and processors predate the llava-hf format written here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transformers
from packaging.version import Version

MIN_TRANSFORMERS = "4.57"
if Version(transformers.__version__) < Version(MIN_TRANSFORMERS):
    pytest.skip(f"the llava-hf format needs transformers >= {MIN_TRANSFORMERS} (LlavaForConditionalGeneration, "
                f"LlavaNextProcessor with chat_template.jinja); this environment has {transformers.__version__}",
                allow_module_level=True)

from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import (AutoProcessor, LlavaForConditionalGeneration,  # noqa: E402
                          LlavaNextForConditionalGeneration)

from llava_avc.errors import UserError  # noqa: E402
from llava_avc.testing import tiny  # noqa: E402
from llava_avc.testing.tiny_hf import make_tiny_llava_hf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE_ID = 4000
PAD_ID = 4001
QUESTION = "Describe this image in detail."
LLAVA_V1_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                   "helpful, detailed, and polite answers to the human's questions. USER: <image>\n"
                   f"{QUESTION} ASSISTANT:")
#: `tokenizer_image_token(LLAVA_V1_PROMPT, tokenizer, -200)` with the ORIGINAL tiny checkpoint's slow
#: LlamaTokenizer(legacy=False), recorded on .venv-457 (llava-torch 1.2.2, transformers 4.57.6);
#: -200 is LLaVA's IMAGE_TOKEN_INDEX placeholder. tests/test_convert.py checks the same equality live.
ORIGINAL_PROMPT_IDS = [1, 299, 2471, 701, 259, 3231, 1009, 276, 342, 3610, 3667, 883, 3949, 300, 883, 2766, 3269,
                       3952, 1320, 3952, 276, 3093, 1303, 315, 262, 1009, 3990, 3935, 1327, 3949, 499, 3963, 3931,
                       -200, 3931, 13, 3972, 521, 766, 316, 278, 3006, 3949, 503, 3963]
#: the same slow tokenizer on plain text, recorded on .venv-457.
ORIGINAL_TEXT_IDS = {
    "Hello world": [1, 1644, 2905],
    " leading space": [1, 3931, 3279, 2865],
}


def _conversation(question=QUESTION):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{preset: path} of the two llava-hf tiny checkpoints (seed 0)."""
    root = tmp_path_factory.mktemp("tiny-hf")
    return {preset: make_tiny_llava_hf(root / preset, preset=preset, seed=0) for preset in ("tiny", "tiny-anyres")}


@pytest.fixture(scope="module")
def loaded(hf_dirs):
    """{preset: (model fp32 eval, processor, loading_info)}."""
    classes = {"tiny": LlavaForConditionalGeneration, "tiny-anyres": LlavaNextForConditionalGeneration}
    out = {}
    for preset, path in hf_dirs.items():
        model, info = classes[preset].from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
        out[preset] = (model.eval(), AutoProcessor.from_pretrained(str(path)), info)
    return out


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------- layout
def test_layout_config_and_provenance(hf_dirs):
    path = hf_dirs["tiny"]
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer.model",
            "tokenizer_config.json", "preprocessor_config.json", "processor_config.json", "chat_template.jinja",
            "tiny_llava_build.json"} <= names
    assert not list(path.parent.glob(".*partial*")), "the staging directory must be gone"
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert (cfg["image_token_index"], cfg["vision_feature_layer"], cfg["vision_feature_select_strategy"]) == \
        (IMAGE_ID, -2, "default")
    assert cfg["projector_hidden_act"] == "gelu" and cfg["image_seq_length"] == 576
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert (text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"], text["num_attention_heads"],
            text["vocab_size"], text["pad_token_id"]) == (64, 192, 4, 4, 4032, PAD_ID)
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"], vision["image_size"],
            vision["patch_size"]) == (64, 3, 4, 336, 14)
    info = json.loads((path / "tiny_llava_build.json").read_text())
    assert (info["format"], info["preset"], info["seed"], info["corpus_version"]) == ("hf", "tiny", 0, "v1")
    anyres = json.loads((hf_dirs["tiny-anyres"] / "config.json").read_text())
    assert anyres["model_type"] == "llava_next" and anyres["vision_config"]["image_size"] == 112
    assert sorted(anyres["image_grid_pinpoints"]) == [[112, 224], [224, 112], [224, 224]]


def test_weights_use_the_llava_hf_hub_key_layout(hf_dirs):
    with safe_open(str(hf_dirs["tiny-anyres"] / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        embed = f.get_tensor("language_model.model.embed_tokens.weight")
    assert {"language_model.lm_head.weight", "multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.bias",
            "vision_tower.vision_model.embeddings.patch_embedding.weight", "image_newline"} <= keys
    assert all(k.split(".")[0] in {"language_model", "multi_modal_projector", "vision_tower", "image_newline"}
               for k in keys)
    assert embed.dtype == torch.float16 and embed.shape == (4032, 64)
    # the rows added for <image>, <pad> and the padding to 64 are the mean of the 4000 trained rows
    mean = embed[:4000].float().mean(0)
    assert torch.allclose(embed[4000:].float(), mean.expand(32, -1), atol=1e-3)


def test_loads_offline_with_no_missing_or_unexpected_keys(loaded):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    for preset, (model, processor, info) in loaded.items():
        assert not any(info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), (preset, info)
        assert model.config.image_token_index == IMAGE_ID
        expected = "LlavaNextProcessor" if preset == "tiny-anyres" else "LlavaProcessor"
        assert type(processor).__name__ == expected
        assert processor.tokenizer.convert_tokens_to_ids("<image>") == IMAGE_ID
        assert processor.tokenizer.pad_token_id == PAD_ID


def test_same_seed_same_bytes_other_seed_differs(hf_dirs, tmp_path):
    again = make_tiny_llava_hf(tmp_path / "again", preset="tiny", seed=0)
    other = make_tiny_llava_hf(tmp_path / "other", preset="tiny", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(again / name) == _sha(hf_dirs["tiny"] / name), name
    assert _sha(other / "model.safetensors") != _sha(again / "model.safetensors")


def test_refuses_a_non_empty_directory_and_an_unknown_preset(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(UserError) as error:
        make_tiny_llava_hf(target)
    assert "not empty" in str(error.value) and "force" in str(error.value) and "\n" not in str(error.value)
    assert (target / "keep.txt").read_text() == "x"
    with pytest.raises(ValueError, match="unknown preset '7b-shape'"):
        make_tiny_llava_hf(tmp_path / "new", preset="7b-shape")
    assert not (tmp_path / "new").exists()
    make_tiny_llava_hf(target, force=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").is_file()


def test_sharded_weights_load(tmp_path, monkeypatch):
    from llava_avc.backends.hf.convert import weights

    monkeypatch.setattr(weights, "MAX_SHARD_BYTES", 400_000)
    path = make_tiny_llava_hf(tmp_path / "sharded", preset="tiny")
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (path / "model.safetensors").exists()
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    model, info = LlavaForConditionalGeneration.from_pretrained(str(path), output_loading_info=True)
    assert not any(info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))


def test_verify_rejects_a_missing_and_an_unexpected_key(hf_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    from llava_avc.backends.hf.convert import verify_hf_checkpoint

    broken = tmp_path / "broken"
    shutil.copytree(hf_dirs["tiny"], broken)
    state = load_file(str(broken / "model.safetensors"))
    state["extra.weight"] = state.pop("multi_modal_projector.linear_2.bias")
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RuntimeError) as error:
        verify_hf_checkpoint(broken)
    assert "linear_2.bias" in str(error.value) and "extra.weight" in str(error.value)
    verify_hf_checkpoint(hf_dirs["tiny"])


# ------------------------------------------------------------------------------- processor
def test_chat_template_renders_the_llava_v1_prompt(loaded):
    processor = loaded["tiny"][1]
    prompt = processor.apply_chat_template(_conversation(), add_generation_prompt=True, tokenize=False)
    assert prompt == LLAVA_V1_PROMPT
    assert processor.tokenizer.apply_chat_template(_conversation(), add_generation_prompt=True,
                                                   tokenize=False) == LLAVA_V1_PROMPT
    second_round = _conversation() + [{"role": "assistant", "content": [{"type": "text", "text": "A man."}]},
                                      {"role": "user", "content": [{"type": "text", "text": "Why?"}]}]
    assert processor.apply_chat_template(second_round, add_generation_prompt=True, tokenize=False) == \
        LLAVA_V1_PROMPT + " A man.</s>USER: Why? ASSISTANT:"


def test_processor_expands_image_into_576_tokens(loaded):
    processor = loaded["tiny"][1]
    inputs = processor(images=tiny.sample_image(), text=LLAVA_V1_PROMPT, return_tensors="pt")
    ids = inputs["input_ids"][0]
    positions = (ids == IMAGE_ID).nonzero()[:, 0]
    assert len(positions) == 576 and positions[-1] - positions[0] == 575
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 336, 336)


def _llava_best_resolution(width, height, pinpoints_wh):
    """LLaVA's select_best_resolution: the (width, height) pinpoint keeping the most pixels, then the
    least padding."""
    best, best_key = None, None
    for target_w, target_h in pinpoints_wh:
        scale = min(target_w / width, target_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        key = (effective, -(target_w * target_h - effective))
        if best_key is None or key > best_key:
            best, best_key = (target_w, target_h), key
    return best


def _llava_anyres_token_count(width, height, pinpoints_wh, tile=112, patch=14):
    """Image features LLaVA-1.6 (anyres + spatial_unpad, CLS dropped) produces for one image, from
    LLaVA's own rules: best (width, height) pinpoint, tiles of `tile` px, unpad, one newline per row."""
    best = _llava_best_resolution(width, height, pinpoints_wh)
    side = tile // patch
    rows, cols = side * best[1] // tile, side * best[0] // tile
    if width / height > cols / rows:
        rows -= 2 * ((rows - int(height * cols / width)) // 2)
    else:
        cols -= 2 * ((cols - int(width * rows / height)) // 2)
    return side * side + rows * cols + rows


@pytest.mark.parametrize("size", [(300, 200), (512, 600), (90, 400)])
def test_anyres_processor_token_count_follows_the_grid(loaded, size):
    processor = loaded["tiny-anyres"][1]
    pinpoints_wh = tiny.PRESETS["tiny-anyres"]["llava"]["image_grid_pinpoints"]  # LLaVA's (width, height)
    expected = _llava_anyres_token_count(*size, pinpoints_wh)
    inputs = processor(images=Image.new("RGB", size, (120, 30, 200)), text=LLAVA_V1_PROMPT, return_tensors="pt")
    assert int((inputs["input_ids"][0] == IMAGE_ID).sum()) == expected
    assert inputs["image_sizes"][0].tolist() == [size[1], size[0]]


def test_the_independent_count_is_right_by_hand():
    """Worked out by hand (64 base tokens + unpadded grid + one newline per row):
    300x200 -> pinpoint 224x224, 16x16 grid, height int(200*16/300)=10 -> 64+10*16+10 = 234;
    512x600 -> 224x224, width int(512*16/600)=13 -> 14 columns -> 64+16*14+16 = 304;
    90x400  -> 112x224 (same effective area as 224x224, less waste), 16 rows x 8, width
               int(90*16/400)=3 -> 4 columns -> 64+16*4+16 = 144."""
    pinpoints_wh = tiny.PRESETS["tiny-anyres"]["llava"]["image_grid_pinpoints"]
    counts = [_llava_anyres_token_count(*size, pinpoints_wh) for size in [(300, 200), (512, 600), (90, 400)]]
    assert counts == [234, 304, 144]


def _expand2square(image, background):
    """LLaVA's mm_utils.expand2square: paste centred on a square of the background colour."""
    width, height = image.size
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def _clip_processor(side=336):
    """The CLIP preprocessing LLaVA applies (PIL backend: what LLaVA's CLIPImageProcessor does)."""
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": side}, crop_size={"height": side, "width": side}, resample=3,
               image_mean=tiny.OPENAI_CLIP_MEAN, image_std=tiny.OPENAI_CLIP_STD)


def test_pixels_follow_llava_pad_to_square_recipe(loaded):
    """LLaVA-1.5's process_images (image_aspect_ratio "pad"): expand2square with the mean colour, then
    CLIP. On 4.57 (slow) and 5.x without torchvision (PIL backend) the match is exact (measured 0.0)."""
    processor = loaded["tiny"][1]
    image = tiny.sample_image()  # 512 x 600: padding matters
    clip = _clip_processor()
    background = tuple(int(x * 255) for x in clip.image_mean)
    reference = torch.as_tensor(clip(_expand2square(image, background), return_tensors="pt")["pixel_values"])
    got = processor(images=image, text=LLAVA_V1_PROMPT, return_tensors="pt")["pixel_values"]
    assert (got - reference).abs().max().item() <= 1e-6
    unpadded = torch.as_tensor(clip(image, return_tensors="pt")["pixel_values"])
    assert (got - unpadded).abs().max().item() > 0.1  # the padding is really there


def _llava_anyres_pixels(image, pinpoints_wh, clip, tile=112):
    """LLaVA's process_anyres_image: the image resized (aspect kept, ceil) and centred on black at the
    best pinpoint, cut into tiles, after a plain square resize of the whole image; each through CLIP."""
    target_w, target_h = _llava_best_resolution(*image.size, pinpoints_wh)
    width, height = image.size
    if target_w / width < target_h / height:
        new_w, new_h = target_w, min(math.ceil(height * target_w / width), target_h)
    else:
        new_w, new_h = min(math.ceil(width * target_h / height), target_w), target_h
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h)), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    tiles = [canvas.crop((x, y, x + tile, y + tile)) for y in range(0, target_h, tile) for x in range(0, target_w, tile)]
    crops = [image.resize((tile, tile))] + tiles
    return torch.stack([torch.as_tensor(clip(crop, return_tensors="pt")["pixel_values"][0]) for crop in crops])


def test_anyres_pixels_follow_llava_anyres_recipe(loaded):
    processor = loaded["tiny-anyres"][1]
    clip = _clip_processor(side=112)
    pinpoints_wh = tiny.PRESETS["tiny-anyres"]["llava"]["image_grid_pinpoints"]
    image = tiny.sample_image()
    for variant in (image, image.crop((0, 0, 512, 300)), image.rotate(90, expand=True)):
        reference = _llava_anyres_pixels(variant, pinpoints_wh, clip)
        got = processor(images=variant, text=LLAVA_V1_PROMPT, return_tensors="pt")["pixel_values"][0]
        assert got.shape == reference.shape and (got - reference).abs().max().item() <= 1e-6, variant.size


# -------------------------------------------------------------------------------- tokenizer
def test_tokenizer_matches_the_original_tiny_tokenization(loaded, hf_dirs):
    import sentencepiece as spm

    tokenizer = loaded["tiny"][1].tokenizer
    sp = spm.SentencePieceProcessor(model_file=str(hf_dirs["tiny"] / "tokenizer.model"))
    assert sp.get_piece_size() == 4000
    # sentencepiece reads "<image>" / "</s>" as plain text, the HF tokenizer as added tokens: compare
    # the text without them here (the ids around <image> are checked against LLaVA's in the next test)
    extra = ["digits 12345 and 3.14", "double  space", "tab\there", "Ünïcödé 日本語 🙂", " "]
    texts = [text for text in tiny._corpus_lines() + extra if not any(t in text for t in ("<image>", "<s>", "</s>"))]
    assert len(texts) > 150
    mismatched = [text for text in texts if tokenizer(text).input_ids != [1] + sp.encode(text)]
    assert mismatched == []
    assert {text: tokenizer(text).input_ids for text in ORIGINAL_TEXT_IDS} == ORIGINAL_TEXT_IDS


def test_processor_ids_equal_llava_tokenizer_image_token_ids(loaded):
    processor = loaded["tiny"][1]
    ids = processor(images=tiny.sample_image(), text=LLAVA_V1_PROMPT, return_tensors="pt")["input_ids"][0].tolist()
    at = ORIGINAL_PROMPT_IDS.index(-200)
    assert ids == ORIGINAL_PROMPT_IDS[:at] + [IMAGE_ID] * 576 + ORIGINAL_PROMPT_IDS[at + 1:]


# ------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("preset", ["tiny", "tiny-anyres"])
def test_greedy_generate_gives_prompt_plus_five_tokens(loaded, preset):
    model, processor, _ = loaded[preset]
    prompt = processor.apply_chat_template(_conversation(), add_generation_prompt=True, tokenize=False)
    inputs = processor(images=tiny.sample_image(), text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        first = model(**inputs).logits[0, -1].argmax().item()
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape == (1, prompt_len + 5)
    assert torch.equal(out[0, :prompt_len], inputs["input_ids"][0])
    assert out[0, prompt_len].item() == first


def test_script_writes_the_hf_format(tmp_path):
    target = tmp_path / "tiny-hf-script"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_llava.py"), "--format", "hf",
                           "--preset", "tiny-anyres", "--out", str(target)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target.resolve())
    assert json.loads((target / "config.json").read_text())["model_type"] == "llava_next"
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_llava.py"), "--format", "hf",
                            "--out", str(target)], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr
