"""One method, both worlds: the same random weights as an original LLaVA checkpoint and, converted by
`llava-avc convert --to hf`, as a llava-hf checkpoint give the same greedy tokens and the same blind
tokens (image span, layers, mask) for AVC, VCD and M3ID in fp32, LLaVA-1.5 and LLaVA-1.6 (anyres).

In-process where both backends import (the 4.57 profile: llava-torch and transformers' own Llava);
against transformers 5 through the hf profile's interpreter (LLAVA_AVC_HF_PYTHON, set by
scripts/test.sh), on the same saved inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import transformers

from llava_avc.backends.versions import HF_OLDEST, version_tuple

pytest.importorskip("llava", reason="the original-LLaVA backend (llava-torch) is not installed on this profile")
if version_tuple(transformers.__version__) < HF_OLDEST:
    pytest.skip(f"transformers {transformers.__version__} has no llava-hf backend (4.57+); both backends load side by "
                "side on the 4.57 profile", allow_module_level=True)

import llava_avc  # noqa: E402
from llava.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from llava_avc.backends.hf.convert import convert_to_hf  # noqa: E402

from helpers import LEAD, QUESTIONS, images_for, no_eos, prompt_ids  # noqa: E402

NEW_TOKENS = 8
CONFIGS = {"avc": AVCConfig(), "vcd": VCDConfig(), "m3id": M3IDConfig(lam=0.5), "none-avc": AVCConfig(alpha=0.0)}
HF_PYTHON = os.environ.get("LLAVA_AVC_HF_PYTHON")
SCRIPT = Path(__file__).with_name("hf_tokens.py")


def _converted(original: Path, tmp_path_factory) -> Path:
    return convert_to_hf(original, tmp_path_factory.mktemp("converted") / f"{original.name}-hf")


@pytest.fixture(scope="module", params=["llava-1.5", "llava-1.6-anyres"])
def pair(request, tiny_llava, tiny_anyres, tiny_llava_dir, tiny_anyres_dir, tmp_path_factory, sample_image):
    """(original results, llava-hf inputs, converted dir, llava-hf model): the same prompt and pixels."""
    anyres = request.param != "llava-1.5"
    tokenizer, model, image_processor, _ = tiny_anyres if anyres else tiny_llava
    converted = _converted(tiny_anyres_dir if anyres else tiny_llava_dir, tmp_path_factory)
    ids = prompt_ids(tokenizer, QUESTIONS[0]).unsqueeze(0)  # (1, T) with LLaVA's placeholder
    images = images_for(model, image_processor, [sample_image])
    original = {name: _original_run(model, tokenizer, ids, images, [sample_image.size], config)
                for name, config in CONFIGS.items()}
    hf_class = transformers.LlavaNextForConditionalGeneration if anyres else transformers.LlavaForConditionalGeneration
    hf_model = hf_class.from_pretrained(str(converted), dtype=torch.float32).eval()
    num_image = original["avc"]["blind"][0].blind.numel()
    hf_inputs = _hf_inputs(hf_model, ids, images, sample_image.size, num_image, anyres)
    return original, hf_inputs, converted, hf_model


def _original_run(model, tokenizer, ids, images, sizes, config) -> dict:
    with llava_avc.patched(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alpha=0 is a no-op on purpose
        output = model.generate(ids, images=images, image_sizes=sizes, do_sample=False, max_new_tokens=NEW_TOKENS,
                                logits_processor=no_eos(tokenizer), return_dict_in_generate=True,
                                **{config.method: config})
    return {"tokens": output.sequences[:, LEAD:].tolist(), "blind": getattr(output, "blind_tokens", None)}


def _hf_inputs(hf_model, ids, images, image_size, num_image: int, anyres: bool) -> dict:
    """The original prompt with its placeholder expanded into `num_image` image tokens, and the same pixels."""
    row = ids[0].tolist()
    at = row.index(IMAGE_TOKEN_INDEX)
    expanded = row[:at] + [hf_model.config.image_token_id] * num_image + row[at + 1:]
    inputs = {"input_ids": torch.tensor([expanded]), "attention_mask": torch.ones(1, len(expanded), dtype=torch.long)}
    if anyres:  # LLaVA's list of (P, 3, H, W) per image -> (1, P, 3, H, W) and (H, W) sizes
        inputs.update(pixel_values=images[0].unsqueeze(0), image_sizes=torch.tensor([[image_size[1], image_size[0]]]))
    else:
        inputs["pixel_values"] = images
    return inputs


def _hf_run(hf_model, inputs: dict, config) -> dict:
    eos = hf_model.generation_config.eos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output = llava_avc.generate(hf_model, **inputs, do_sample=False, max_new_tokens=NEW_TOKENS, suppress_tokens=[eos],
                                    return_dict_in_generate=True, **{config.method: config})
    return {"tokens": output.sequences[:, inputs["input_ids"].shape[1]:].tolist(),
            "blind": getattr(output, "blind_tokens", None)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_both_formats_give_the_same_greedy_tokens(pair, name):
    original, inputs, _, hf_model = pair
    assert _hf_run(hf_model, inputs, CONFIGS[name])["tokens"] == original[name]["tokens"]


def test_the_methods_change_the_answer_in_both_formats(pair):
    """Otherwise equal tokens above could not tell a method from plain decoding."""
    original = pair[0]
    assert original["avc"]["tokens"] != original["none-avc"]["tokens"]


def test_both_formats_find_the_same_blind_tokens(pair):
    original, inputs, _, hf_model = pair
    ours, theirs = _hf_run(hf_model, inputs, AVCConfig())["blind"][0], original["avc"]["blind"][0]
    assert ours.image_span == theirs.image_span  # the same text before the image in both formats
    assert ours.layers == theirs.layers
    assert torch.equal(ours.blind, theirs.blind) and 0 < theirs.num_blind < theirs.blind.numel()
    torch.testing.assert_close(ours.scores, theirs.scores, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not HF_PYTHON, reason="set LLAVA_AVC_HF_PYTHON (scripts/test.sh does) to compare with transformers 5")
def test_transformers_5_gives_the_same_tokens_on_the_converted_checkpoint(pair, tmp_path):
    original, inputs, converted, hf_model = pair
    saved = tmp_path / "inputs.pt"
    torch.save({**inputs, "model_class": type(hf_model).__name__}, saved)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([HF_PYTHON, str(SCRIPT), str(converted), str(saved), str(NEW_TOKENS)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert version_tuple(there["transformers"]) >= (5, 0, 0), there["transformers"]  # the other world, really
    for name in CONFIGS:
        assert there["tokens"][name] == original[name]["tokens"], name
    theirs = original["avc"]["blind"][0]
    record = there["blind"][0]
    assert tuple(record["image_span"]) == theirs.image_span and record["layers"] == theirs.layers
    assert record["blind"] == theirs.blind.tolist()


@pytest.mark.skipif(not HF_PYTHON, reason="set LLAVA_AVC_HF_PYTHON (scripts/test.sh does) to compare with transformers 5")
def test_convert_run_under_transformers_5_writes_the_same_weights_and_gives_the_same_tokens(pair, tmp_path,
                                                                                            tiny_llava_dir,
                                                                                            tiny_anyres_dir):
    """`llava-avc convert` in the transformers-5 world (its checkpoint check loads on the meta device, where
    transformers 5.25 kernelizes by default) writes the weights the 4.57 world writes, and they decode alike."""
    from safetensors.torch import load_file

    original, inputs, converted_here, hf_model = pair
    source = tiny_anyres_dir if isinstance(hf_model, transformers.LlavaNextForConditionalGeneration) else tiny_llava_dir
    out = tmp_path / f"{source.name}-hf5"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([HF_PYTHON, "-m", "llava_avc", "convert", "--to", "hf", str(source), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    here, there = load_file(converted_here / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(here) == sorted(there)
    assert all(torch.equal(here[name], there[name]) for name in here)
    saved = tmp_path / "inputs.pt"
    torch.save({**inputs, "model_class": type(hf_model).__name__}, saved)
    proc = subprocess.run([HF_PYTHON, str(SCRIPT), str(out), str(saved), str(NEW_TOKENS)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    there_tokens = json.loads(proc.stdout.strip().splitlines()[-1])["tokens"]
    assert all(there_tokens[name] == original[name]["tokens"] for name in CONFIGS)
