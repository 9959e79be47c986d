"""The offline tiny-checkpoint factory (llava_avc.testing.tiny) against the real llava-torch code."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402
from llava.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from llava.conversation import conv_templates  # noqa: E402
from llava.mm_utils import KeywordsStoppingCriteria, process_images, tokenizer_image_token  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc.errors import UserError  # noqa: E402
from llava_avc.testing import tiny  # noqa: E402

from helpers import set_attention_implementation  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUESTION = "Describe this image in detail."


def _prompt_ids(tokenizer, question=QUESTION):
    """llava_v1 prompt with one <image> placeholder, as LLaVA's eval scripts build it."""
    conv = conv_templates["llava_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    return tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]


def _merged_length(model, input_ids, images, image_sizes):
    """Sequence length after LLaVA splices the image features into the prompt embeddings."""
    with torch.no_grad():
        out = model.prepare_inputs_labels_for_multimodal(
            input_ids, None, None, None, None, images, image_sizes=image_sizes
        )
    return out[4].shape[1]


def _generate(bundle, image):
    """Greedy LLaVA generation of at most 8 tokens with the </s> keyword stop."""
    tokenizer, model, image_processor, _ = bundle
    input_ids = _prompt_ids(tokenizer)
    images = process_images([image], image_processor, model.config)
    stop = KeywordsStoppingCriteria([conv_templates["llava_v1"].sep2], tokenizer, input_ids)
    # Without a method keyword the patched generate is upstream's (untouched on transformers 4.37;
    # on 4.38+ LLaVA 1.2.2 only runs with llava-avc's compatibility patch).
    with llava_avc.patched():
        return model.generate(
            input_ids, images=images, image_sizes=[image.size], do_sample=False,
            max_new_tokens=8, stopping_criteria=[stop], use_cache=True,
        )


def _tensors(ckpt):
    """All tensors of a checkpoint (LLM and vision tower safetensors), keyed by file/name."""
    return {
        f"{path.relative_to(ckpt)}:{name}": t
        for path in sorted(Path(ckpt).rglob("*.safetensors"))
        for name, t in load_file(str(path)).items()
    }


def _sha(path):
    """sha256 hex digest of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_checkpoint_layout_and_config(tiny_llava_dir):
    cfg = json.loads((tiny_llava_dir / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama"
    assert cfg["architectures"] == ["LlavaLlamaForCausalLM"]
    assert cfg.get("torch_dtype", cfg.get("dtype")) == "float16"  # renamed `dtype` in transformers 4.56
    assert cfg["mm_vision_tower"] == str(tiny_llava_dir / "vision_tower")
    assert Path(cfg["mm_vision_tower"]).is_absolute()
    assert (Path(cfg["mm_vision_tower"]) / "preprocessor_config.json").is_file()
    expected = {
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "use_mm_proj": True, "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right",
        "mm_hidden_size": 64, "hidden_size": 64, "num_hidden_layers": 4, "vocab_size": 4000,
    }
    assert {k: cfg[k] for k in expected} == expected
    names = set(load_file(str(tiny_llava_dir / "model.safetensors")))
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.weight", "lm_head.weight"} <= names
    assert not list(tiny_llava_dir.parent.glob(".*partial*")), "staging directory left behind"


def test_loads_with_llava_loader_and_generates(tiny_llava, sample_image):
    tokenizer, model, image_processor, context_len = tiny_llava
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert len(tokenizer) == model.config.vocab_size == model.lm_head.out_features == 4000
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == "<unk>" and context_len == 2048
    assert model.dtype == torch.float32 and model.get_vision_tower().dtype == torch.float32
    assert image_processor.crop_size == {"height": 336, "width": 336}
    input_ids = _prompt_ids(tokenizer)
    assert (input_ids == IMAGE_TOKEN_INDEX).sum() == 1 and input_ids[0, 0] == 1
    out = _generate(tiny_llava, sample_image)
    new_tokens = [t for t in out[0].tolist() if t != tokenizer.bos_token_id]
    assert 1 <= len(new_tokens) <= 8
    assert all(0 <= t < 4000 for t in new_tokens)
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def test_tiny_splices_576_image_positions(tiny_llava, sample_image):
    tokenizer, model, image_processor, _ = tiny_llava
    input_ids = _prompt_ids(tokenizer)
    images = process_images([sample_image], image_processor, model.config)
    assert tuple(images.shape) == (1, 3, 336, 336)
    merged = _merged_length(model, input_ids, images, [sample_image.size])
    assert merged == input_ids.shape[1] - 1 + 576


def test_init_gives_clear_top1_and_peaky_image_attention(tiny_llava, sample_image):
    """The tiny init (std 0.15, lm_head x4) avoids tied logits and uniform image attention."""
    tokenizer, model, image_processor, _ = tiny_llava
    input_ids = _prompt_ids(tokenizer)
    start = int((input_ids[0] == IMAGE_TOKEN_INDEX).nonzero()[0])
    images = process_images([sample_image], image_processor, model.config)
    previous = set_attention_implementation(model, "eager")  # sdpa gives no attentions on >= 4.53
    try:
        with torch.no_grad():
            out = model(input_ids, images=images, image_sizes=[sample_image.size],
                        output_attentions=True)
    finally:
        set_attention_implementation(model, previous)
    top2 = out.logits[0, -1].topk(2).values
    assert top2[0] - top2[1] > 0.05
    for layer_attn in out.attentions:
        weights = layer_attn[0, :, -1, start:start + 576].mean(0)
        assert weights.max() > 3 * weights.mean()


def test_anyres_loads_generates_and_counts_depend_on_aspect(tiny_anyres, tiny_anyres_dir,
                                                            sample_image):
    tokenizer, model, image_processor, _ = tiny_anyres
    assert model.config.image_aspect_ratio == "anyres"
    assert model.config.mm_patch_merge_type == "spatial_unpad"
    newline = load_file(str(tiny_anyres_dir / "model.safetensors"))["model.image_newline"]
    assert newline.shape == (64,) and 0.08 < newline.float().std() < 0.18  # ~1/sqrt(64)
    assert torch.equal(model.get_model().image_newline.half(), newline)
    out = _generate(tiny_anyres, sample_image)
    assert len([t for t in out[0].tolist() if t != tokenizer.bos_token_id]) >= 1
    wide = sample_image.resize((600, 300))
    input_ids = _prompt_ids(tokenizer)
    counts = []
    for image in (sample_image, wide):
        images = process_images([image], image_processor, model.config)
        merged = _merged_length(model, input_ids, images, [image.size])
        counts.append(merged - input_ids.shape[1] + 1)
    # portrait 512x600 -> 224x224 grid (2x2 tiles of 8x8), unpadded to 16x14, +16 newlines, +64
    # base tokens = 304; wide 600x300 -> 224x112 grid (16x8), 8 rows x (16+1) + 64 = 200.
    assert counts == [304, 200]


def test_same_seed_same_weights_and_tokenizer(tiny_llava_dir, tmp_path):
    copy = tiny.make_tiny_llava(tmp_path / "llava-copy", seed=0)
    ref, new = _tensors(tiny_llava_dir), _tensors(copy)
    assert ref.keys() == new.keys() and len(ref) > 10
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    assert _sha(copy / "tokenizer.model") == _sha(tiny_llava_dir / "tokenizer.model")
    from transformers import LlamaTokenizer

    vocab = LlamaTokenizer.from_pretrained(str(copy)).get_vocab()
    assert vocab == LlamaTokenizer.from_pretrained(str(tiny_llava_dir)).get_vocab()
    assert len(vocab) == 4000


def test_refuses_non_empty_dir_and_force_replaces(tiny_llava_dir, tmp_path):
    target = tmp_path / "llava-busy"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="--force") as err:
        tiny.make_tiny_llava(target, seed=1)
    assert str(target) in str(err.value)
    assert (target / "keep.txt").exists()
    path = tiny.make_tiny_llava(target, seed=1, force=True)
    assert path == target and not (target / "keep.txt").exists()
    ref, other = _tensors(tiny_llava_dir), _tensors(target)
    assert ref.keys() == other.keys()
    random = [k for k in ref if ref[k].numel() > 1 and ref[k].float().std() > 0]
    assert "model.safetensors:lm_head.weight" in random and len(random) > 20
    assert not any(torch.equal(ref[k], other[k]) for k in random)  # norms / biases stay 1 / 0


def test_bad_directory_name_rejected(tmp_path):
    with pytest.raises(ValueError, match="must contain 'llava'"):
        tiny.make_tiny_llava(tmp_path / "tiny-model")
    with pytest.raises(ValueError, match="mistral"):
        tiny.make_tiny_llava(tmp_path / "llava-mistral-tiny")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        """Simulate Ctrl-C in the middle of a build (after the weights were written)."""
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "build_tokenizer", boom)
    with pytest.raises(KeyboardInterrupt):
        tiny.make_tiny_llava(tmp_path / "llava-broken")
    assert list(tmp_path.iterdir()) == []


def test_out_features_multiple_of_32_and_overrides(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny.preset_configs("tiny", intermediate_size=100)
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny.make_tiny_llava(tmp_path / "llava-bad", intermediate_size=100)
    with pytest.raises(ValueError, match="multiple of 32"):  # k/v proj: 1 head x 16 = 16
        tiny.preset_configs("tiny", num_key_value_heads=1)
    with pytest.raises(ValueError, match="unknown config override"):
        tiny.preset_configs("tiny", num_layers=3)
    with pytest.raises(ValueError, match="unknown preset"):
        tiny.preset_configs("huge")
    assert list(tmp_path.iterdir()) == []
    llm, vision = tiny.preset_configs("tiny", num_key_value_heads=2, num_hidden_layers=3)
    assert (llm.num_key_value_heads, llm.num_hidden_layers, llm.hidden_size) == (2, 3, 64)
    assert vision.image_size == 336 and llm.mm_hidden_size == 64


def test_7b_shape_dry_check_and_32000_tokenizer(tiny_llava, tmp_path):
    llm, vision = tiny.preset_configs("7b-shape")
    assert (llm.num_hidden_layers, llm.hidden_size, llm.intermediate_size) == (32, 4096, 11008)
    assert (llm.num_attention_heads, llm.vocab_size, llm.mm_hidden_size) == (32, 32000, 1024)
    assert (vision.hidden_size, vision.intermediate_size) == (1024, 4096)
    assert vision.num_hidden_layers == 24
    assert (vision.num_attention_heads, vision.image_size, vision.patch_size) == (16, 336, 14)
    tok32 = tiny.build_tokenizer(tmp_path, 32000)
    assert len(tok32) == 32000 and tok32.convert_ids_to_tokens(31999) == "<unused_27999>"
    tok4k = tiny_llava[0]
    text = "A chat between a curious human. USER: Is there a dog? ASSISTANT: No 123"
    assert tok32(text).input_ids == tok4k(text).input_ids  # padding never changes tokenization
    assert max(tok32("<unused_00001> " + text).input_ids) < 4000


def test_script_exits_2_with_one_line_error(tmp_path):
    target = tmp_path / "llava-taken"
    target.mkdir()
    (target / "file").write_text("x")
    script = str(REPO / "scripts" / "make_tiny_llava.py")
    proc = subprocess.run(
        [sys.executable, script, "--out", str(target)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--force" in lines[0] and str(target) in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_sample_image():
    image = tiny.sample_image()
    assert image.mode == "RGB" and image.size == (512, 600)
