"""Original LLaVA checkpoints -> llava-hf (llava_avc.backends.hf.convert): the two formats side by side.

Needs both llava-torch and transformers >= 4.57 (transformers' Llava / LlavaNext classes), i.e. the
.venv-457 profile; elsewhere the whole module is skipped (one skip) with the reason.
Measured on .venv-457 (tiny and tiny-anyres, seed 0, three aspect ratios): the processor's pixels
equal LLaVA's process_images EXACTLY (max |diff| 0.0: the same padding colour and offsets, then
the same CLIP resize / crop / normalize code), and so do the last-position logits (0.0); the tests
allow 1e-6 on pixels (float rounding, should an implementation detail change) and 1e-4 on logits.
"""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

import transformers
from packaging.version import Version

MIN_TRANSFORMERS = "4.57"
pytest.importorskip("llava", reason="converting needs the original LLaVA codebase (llava-torch) to compare against")
if Version(transformers.__version__) < Version(MIN_TRANSFORMERS):
    pytest.skip(f"the llava-hf side needs transformers >= {MIN_TRANSFORMERS}; this environment has "
                f"{transformers.__version__} (run on the 4.57 profile, .venv-457)", allow_module_level=True)

from llava.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from llava.conversation import conv_templates  # noqa: E402
from llava.mm_utils import process_images  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import (AutoProcessor, LlavaForConditionalGeneration,  # noqa: E402
                          LlavaNextForConditionalGeneration)

import llava_avc  # noqa: E402
from llava_avc.errors import UserError  # noqa: E402
from llava_avc.backends.hf.convert import convert_to_hf  # noqa: E402
from llava_avc.interfaces import convert_command  # noqa: E402

from helpers import QUESTIONS, no_eos, prompt_ids, variant_images  # noqa: E402

IMAGE_ID, PAD_ID, VOCAB = 4000, 4001, 4000
CLASSES = {"tiny": LlavaForConditionalGeneration, "tiny-anyres": LlavaNextForConditionalGeneration}


@pytest.fixture(scope="module")
def converted(tiny_llava_dir, tiny_anyres_dir, tmp_path_factory):
    """{preset: llava-hf directory converted from the session's original tiny checkpoints}."""
    root = tmp_path_factory.mktemp("converted")
    return {"tiny": convert_to_hf(tiny_llava_dir, root / "tiny-hf"),
            "tiny-anyres": convert_to_hf(tiny_anyres_dir, root / "tiny-anyres-hf")}


@pytest.fixture(scope="module")
def pairs(converted, tiny_llava, tiny_anyres):
    """{preset: (original (tokenizer, model, image_processor, ctx), hf model fp32, processor, loading_info)}."""
    out = {}
    for preset, original in (("tiny", tiny_llava), ("tiny-anyres", tiny_anyres)):
        model, info = CLASSES[preset].from_pretrained(str(converted[preset]), dtype=torch.float32,
                                                      output_loading_info=True)
        out[preset] = (original, model.eval(), AutoProcessor.from_pretrained(str(converted[preset])), info)
    return out


def _llava_v1(*turns, system=None):
    """LLaVA's own llava_v1 prompt for (user, assistant-or-None) turns."""
    conv = conv_templates["llava_v1"].copy()
    if system is not None:
        conv.system = system
    for user, assistant in turns:
        conv.append_message(conv.roles[0], user)
        conv.append_message(conv.roles[1], assistant)
    return conv.get_prompt()


def _hf_prompt(processor, question):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def _expanded(original_ids, n_image_tokens):
    """LLaVA's ids with the IMAGE_TOKEN_INDEX placeholder replaced by n <image> ids."""
    at = original_ids.tolist().index(IMAGE_TOKEN_INDEX)
    ids = original_ids.tolist()
    return ids[:at] + [IMAGE_ID] * n_image_tokens + ids[at + 1:]


def _llava_pixels(original, image):
    """LLaVA's process_images for one image: (1, 3, H, W) (pad) or (1, P, 3, H, W) (anyres)."""
    _, model, image_processor, _ = original
    pixels = process_images([image], image_processor, model.config)
    return pixels[0].unsqueeze(0) if isinstance(pixels, list) else pixels


# -------------------------------------------------------------------------------- structure
def test_converted_checkpoints_load_strictly_and_keep_the_weights(pairs, converted, tiny_llava_dir):
    for preset, (original, model, processor, info) in pairs.items():
        assert not any(info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), (preset, info)
        assert (model.config.image_token_index, model.config.text_config.vocab_size) == (IMAGE_ID, 4032)
        assert processor.tokenizer.pad_token_id == PAD_ID and processor.tokenizer.padding_side == "left"
        hf_state, llava_state = model.state_dict(), original[1].state_dict()
        hf_q = next(v for k, v in hf_state.items() if k.endswith("language_model.layers.2.self_attn.q_proj.weight"))
        assert torch.equal(hf_q, llava_state["model.layers.2.self_attn.q_proj.weight"])
        hf_proj = next(v for k, v in hf_state.items() if k.endswith("multi_modal_projector.linear_2.weight"))
        assert torch.equal(hf_proj, llava_state["model.mm_projector.2.weight"])
        assert torch.equal(model.lm_head.weight[:VOCAB], original[1].lm_head.weight)
        # the rows of <image>, <pad> and the padding to 64 are the mean of the original rows
        embed = model.get_input_embeddings().weight
        assert torch.allclose(embed[VOCAB:], embed[:VOCAB].mean(0).expand(32, -1), atol=1e-3)
    with safe_open(str(converted["tiny"] / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "language_model.model.embed_tokens.weight" in keys and "multi_modal_projector.linear_1.bias" in keys
    assert any(key.startswith("vision_tower.vision_model.encoder.layers.") for key in keys)
    anyres = json.loads((converted["tiny-anyres"] / "config.json").read_text())
    assert anyres["architectures"] == ["LlavaNextForConditionalGeneration"]
    assert sorted(anyres["image_grid_pinpoints"]) == [[112, 224], [224, 112], [224, 224]]


def test_chat_template_is_llavas_llava_v1(pairs):
    processor = pairs["tiny"][2]
    question = QUESTIONS[2]
    assert _hf_prompt(processor, question) == _llava_v1(("<image>\n" + question, None))
    two_rounds = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
                  {"role": "user", "content": [{"type": "text", "text": "Are you sure?"}]}]
    assert processor.apply_chat_template(two_rounds, add_generation_prompt=True, tokenize=False) == \
        _llava_v1(("<image>\n" + question, "Red."), ("Are you sure?", None))
    with_system = [{"role": "system", "content": "Answer briefly."}] + two_rounds[:1]
    assert processor.apply_chat_template(with_system, add_generation_prompt=True, tokenize=False) == \
        _llava_v1(("<image>\n" + question, None), system="Answer briefly.")


# ------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("preset", ["tiny", "tiny-anyres"])
def test_same_token_ids_for_the_same_prompt(pairs, sample_image, preset):
    original, _, processor, _ = pairs[preset]
    for image in variant_images(sample_image):
        for question in QUESTIONS:
            llava_ids = prompt_ids(original[0], question)
            hf_ids = processor(images=image, text=_hf_prompt(processor, question), return_tensors="pt")["input_ids"][0]
            n_image = _llava_feature_count(original, image)
            assert n_image == 576 if preset == "tiny" else n_image > 64
            assert hf_ids.tolist() == _expanded(llava_ids, n_image), (preset, image.size, question)


def _llava_feature_count(original, image):
    """How many embeddings LLaVA's own merge puts in place of the image placeholder."""
    with torch.no_grad(), llava_avc.patched():
        merged = original[1].prepare_inputs_labels_for_multimodal(
            torch.tensor([[1, IMAGE_TOKEN_INDEX]]), None, None, None, None, _llava_pixels(original, image),
            [image.size])
    return merged[4].shape[1] - 1


def test_plain_text_ids_equal_the_original_slow_tokenizer(pairs):
    from llava_avc.testing.tiny import _corpus_lines

    (slow, *_), _, processor, _ = pairs["tiny"]
    fast = processor.tokenizer
    extra = ["Hello world", " leading space", "double  space", "trailing ", "new\nline", "digits 12345 and 3.14",
             "Ünïcödé ñ 日本語 🙂", " ", QUESTIONS[2]]
    texts = [text for text in _corpus_lines() + extra if not any(t in text for t in ("<image>", "<s>", "</s>"))]
    assert len(texts) > 150
    assert [text for text in texts if fast(text).input_ids != slow(text).input_ids] == []
    # the documented difference (docs/llava-hf-format.md, "Tokenizer"): text right after </s>
    # inside one string gets the dummy-prefix '▁' here, not in the slow legacy=False tokenizer
    assert slow("a</s>b").input_ids[-1] == slow.convert_tokens_to_ids("b")
    assert fast("a</s>b").input_ids[-1] == slow.convert_tokens_to_ids("▁b")


@pytest.mark.parametrize("preset", ["tiny", "tiny-anyres"])
def test_processor_pixels_equal_llava_process_images(pairs, sample_image, preset):
    original, _, processor, _ = pairs[preset]
    for image in variant_images(sample_image):
        llava = _llava_pixels(original, image)
        hf = processor(images=image, text=_hf_prompt(processor, QUESTIONS[0]), return_tensors="pt")["pixel_values"]
        assert hf.shape == llava.shape, (preset, image.size)
        assert (hf - llava).abs().max().item() <= 1e-6, (preset, image.size)


@pytest.mark.parametrize("preset", ["tiny", "tiny-anyres"])
def test_same_pixels_give_the_same_last_logits(pairs, sample_image, preset):
    original, model, processor, _ = pairs[preset]
    for image in variant_images(sample_image)[:2]:
        llava_ids = prompt_ids(original[0], QUESTIONS[1])
        pixels = _llava_pixels(original, image)
        hf_inputs = processor(images=image, text=_hf_prompt(processor, QUESTIONS[1]), return_tensors="pt")
        extra = {"image_sizes": hf_inputs["image_sizes"]} if preset == "tiny-anyres" else {}
        with torch.no_grad(), llava_avc.patched():
            llava_logits = original[1](llava_ids[None], images=pixels, image_sizes=[image.size]).logits[0, -1]
            hf_logits = model(input_ids=hf_inputs["input_ids"], pixel_values=pixels, **extra).logits[0, -1]
        assert torch.allclose(hf_logits[:VOCAB], llava_logits, atol=1e-4, rtol=0), (preset, image.size)
        assert hf_logits[:VOCAB].argmax() == llava_logits.argmax()


def test_same_greedy_tokens(pairs, sample_image):
    original, model, processor, _ = pairs["tiny"]
    tokenizer, llava_model, _, _ = original
    llava_ids = prompt_ids(tokenizer, QUESTIONS[0])[None]
    pixels = _llava_pixels(original, sample_image)
    with torch.no_grad(), llava_avc.patched():
        llava_out = llava_model.generate(llava_ids, images=pixels, image_sizes=[sample_image.size], do_sample=False,
                                         max_new_tokens=6, logits_processor=no_eos(tokenizer))
    inputs = processor(images=sample_image, text=_hf_prompt(processor, QUESTIONS[0]), return_tensors="pt")
    hf_out = model.generate(**inputs, do_sample=False, max_new_tokens=6, suppress_tokens=[tokenizer.eos_token_id])
    assert hf_out[0, inputs["input_ids"].shape[1]:].tolist() == llava_out[0, -6:].tolist()


# ---------------------------------------------------------------------------- command line
def _parser():
    parser = argparse.ArgumentParser(prog="llava-avc")
    convert_command.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_convert_command_through_argparse(tiny_llava_dir, tmp_path, capsys):
    out = tmp_path / "cli-hf"
    argv = ["convert", "--to", "hf", str(tiny_llava_dir), str(out)]
    args = _parser().parse_args(argv)
    assert args.handler(args, argv) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    args = _parser().parse_args(argv)
    with pytest.raises(UserError, match="--force"):
        args.handler(args, argv)
    args = _parser().parse_args(argv + ["--force"])
    assert args.handler(args, argv) == 0
    with pytest.raises(SystemExit):
        _parser().parse_args(["convert", "--to", "gguf", str(tiny_llava_dir), str(out)])


def test_main_cli_converts_and_refuses_to_overwrite(tiny_llava_dir, tmp_path, capsys):
    """`llava-avc convert` through the real entry point."""
    from llava_avc.interfaces import cli

    out = tmp_path / "main-hf"
    assert cli.main(["convert", "--to", "hf", str(tiny_llava_dir), str(out)]) == 0
    assert cli.main(["convert", "--to", "hf", str(tiny_llava_dir), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llava-avc convert: error:") and "--force" in err[0]


# ------------------------------------------------------------------------------ bad inputs
def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_refuses_what_is_not_an_original_checkpoint(tmp_path, converted):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as error:
        convert_to_hf(empty, tmp_path / "out")
    assert "not an original LLaVA checkpoint" in _one_line(error) and "config.json" in str(error.value)
    with pytest.raises(ValueError) as error:
        convert_to_hf(converted["tiny"], tmp_path / "out")  # already llava-hf
    assert "model_type 'llava'" in _one_line(error)
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_out_dir_and_keeps_it(tiny_llava_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as error:
        convert_to_hf(tiny_llava_dir, out)
    assert "not empty" in _one_line(error) and "--force" in str(error.value)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="is the original checkpoint"):
        convert_to_hf(tiny_llava_dir, tiny_llava_dir, force=True)


def test_pytorch_bin_shards_convert_like_safetensors(tiny_llava_dir, converted, tmp_path):
    from safetensors.torch import load_file

    original = tmp_path / "llava-tiny-bin"  # config.json's mm_vision_tower still names the original's tower
    shutil.copytree(tiny_llava_dir, original, ignore=shutil.ignore_patterns("model.safetensors", "vision_tower"))
    torch.save(load_file(str(tiny_llava_dir / "model.safetensors")), original / "pytorch_model.bin")
    got = load_file(str(convert_to_hf(original, tmp_path / "from-bin") / "model.safetensors"))
    expected = load_file(str(converted["tiny"] / "model.safetensors"))
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)


def test_a_trained_vision_tower_in_the_shards_is_used_when_unfrozen_as_llava_does(tiny_llava_dir, tmp_path):
    """LLaVA-1.6 checkpoints set unfreeze_mm_vision_tower and carry their trained CLIP in the shards
    (model.vision_tower.vision_tower.*); LLaVA's loader then uses those, not the hub tower's."""
    from safetensors.torch import load_file, save_file

    from llava_avc.testing.tiny import load_tiny

    original = tmp_path / "llava-tiny-unfrozen"
    shutil.copytree(tiny_llava_dir, original)
    tower = load_file(str(tiny_llava_dir / "vision_tower" / "model.safetensors"))
    generator = torch.Generator().manual_seed(3)
    trained = {f"model.vision_tower.vision_tower.{key}": value + 0.05 * torch.randn(value.shape, generator=generator)
               .to(value.dtype) for key, value in tower.items()}
    save_file({**load_file(str(original / "model.safetensors")), **trained}, str(original / "model.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((original / "config.json").read_text())
    (original / "config.json").write_text(json.dumps({**config, "unfreeze_mm_vision_tower": True}))
    _, llava_model, _, _ = load_tiny(original)
    llava_tower = llava_model.get_vision_tower().vision_tower.state_dict()
    hf = LlavaForConditionalGeneration.from_pretrained(str(convert_to_hf(original, tmp_path / "hf")), dtype=torch.float32)
    hf_tower = hf.model.vision_tower.state_dict()
    name = "encoder.layers.1.mlp.fc1.weight"
    hf_value = next(value for key, value in hf_tower.items() if key.endswith(name))
    assert torch.equal(hf_value, llava_tower["vision_model." + name].float())
    assert not torch.equal(hf_value, tower["vision_model." + name].float())


def _copy_with_hub_tower(original, target, repo_id):
    """A copy of the original checkpoint whose mm_vision_tower is a hub id (no local tower folder)."""
    shutil.copytree(original, target, ignore=shutil.ignore_patterns("vision_tower"))
    config = json.loads((target / "config.json").read_text())
    config["mm_vision_tower"] = repo_id
    (target / "config.json").write_text(json.dumps(config))


def test_hub_id_vision_tower_comes_from_the_local_cache_only(tiny_llava_dir, tmp_path, monkeypatch):
    repo_id, commit = "openai/clip-vit-large-patch14-336", "0" * 40
    original = tmp_path / "llava-hub-tower"
    _copy_with_hub_tower(tiny_llava_dir, original, repo_id)
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(UserError) as error:
        convert_to_hf(original, tmp_path / "out")
    assert repo_id in _one_line(error) and "download" in str(error.value)
    repo = cache / "models--openai--clip-vit-large-patch14-336"
    shutil.copytree(tiny_llava_dir / "vision_tower", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = convert_to_hf(original, tmp_path / "out")
    model = LlavaForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32)
    reference = convert_to_hf(tiny_llava_dir, tmp_path / "reference")
    expected = LlavaForConditionalGeneration.from_pretrained(str(reference), dtype=torch.float32)
    for (name, value), (_, other) in zip(model.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(value, other), name
