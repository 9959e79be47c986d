"""The benchmark protocols' prompt template and image processing mean the same on both backends, and the
run record says what was used: `conv_mode` (llava_v1 / vicuna_v1) and `center_crop` (CLIP resize + center
crop vs LLaVA's pad to square) are honoured by the llava-hf backend, not silently replaced by the
checkpoint's own; an unknown template is refused before the model loads.

The side-by-side tests need both backends (the 4.57 profile): the original LLaVA pipeline and the
llava-hf one on the converted tiny checkpoint must give the same ids and the same pixels.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers

from llava_avc.backends.versions import HF_OLDEST, version_tuple

from helpers import QUESTIONS, variant_images

HF_BACKEND = version_tuple(transformers.__version__) >= HF_OLDEST
LLAVA = importlib.util.find_spec("llava") is not None
both_backends = pytest.mark.skipif(not (HF_BACKEND and LLAVA), reason="needs both backends (the 4.57 profile)")


def run_cli(*argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llava_avc", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def pipelines(tiny_llava_dir, tmp_path_factory):
    """(LlavaPipeline of the original tiny checkpoint, HFPipeline of its conversion, HFPipeline of the same
    conversion whose image processor is CLIP's, which cannot pad: as llava-hf/llava-1.5-7b-hf ships it)."""
    from llava_avc.backends.hf.convert import convert_to_hf
    from llava_avc.backends.hf.pipeline import HFPipeline
    from llava_avc.backends.llava.pipeline import LlavaPipeline

    root = tmp_path_factory.mktemp("pre")
    converted = convert_to_hf(tiny_llava_dir, root / "tiny-hf")
    clip = root / "tiny-hf-clip"
    shutil.copytree(converted, clip)
    config = json.loads((clip / "preprocessor_config.json").read_text())
    config.pop("do_pad")
    config["image_processor_type"] = "CLIPImageProcessor"
    (clip / "preprocessor_config.json").write_text(json.dumps(config))
    return (LlavaPipeline.load(str(tiny_llava_dir), device="cpu"), HFPipeline.load(str(converted), device="cpu"),
            HFPipeline.load(str(clip), device="cpu"))


def _collapsed(ids: torch.Tensor, image_token: int, placeholder: int) -> list:
    """llava-hf ids with their run of image tokens collapsed into LLaVA's one placeholder."""
    out = []
    for token in ids.tolist():
        if token == image_token:
            if not out or out[-1] != placeholder:
                out.append(placeholder)
        else:
            out.append(token)
    return out


@both_backends
@pytest.mark.parametrize("conv_mode", ["llava_v1", "vicuna_v1"])
@pytest.mark.parametrize("center_crop", [True, False], ids=["center-crop", "pad"])
def test_both_backends_make_the_same_ids_and_pixels_for_a_protocol(pipelines, sample_image, conv_mode, center_crop):
    from llava.constants import IMAGE_TOKEN_INDEX

    original, hf, hf_clip = pipelines
    images = variant_images(sample_image)
    texts = [QUESTIONS[0]] * len(images)
    theirs = original.inputs(texts, images, conv_mode, center_crop)
    for pipeline in (hf, hf_clip):
        ours = pipeline.inputs(texts, images, conv_mode, center_crop)
        image_token = pipeline.model.config.image_token_id
        for row in range(len(images)):
            mask = theirs["attention_mask"][row].bool()
            assert _collapsed(ours["input_ids"][row][ours["attention_mask"][row].bool()], image_token,
                              IMAGE_TOKEN_INDEX) == theirs["input_ids"][row][mask].tolist()
        torch.testing.assert_close(ours["pixel_values"], theirs["images"], atol=1e-6, rtol=0)
    # the two image treatments really differ on these non-square photos (else the test could not tell)
    if center_crop:
        other = original.inputs(texts, images, conv_mode, False)["images"]
        assert (other - theirs["images"]).abs().max() > 0.1


@both_backends
def test_the_run_record_says_what_each_backend_made_of_the_protocol(pipelines):
    original, hf, hf_clip = pipelines
    assert original.preprocessing("llava_v1", True) == {
        "backend": "llava", "model_type": "llava_llama", "prompt": "LLaVA conversation template 'llava_v1'",
        "image": "CLIP resize + center crop, no pad to square"}
    assert hf.preprocessing("vicuna_v1", False) == {
        "backend": "hf", "model_type": "llava", "prompt": "LLaVA conversation template 'vicuna_v1'",
        "image": "pad to a square with the image mean (the processor's do_pad), then CLIP resize + center crop"}
    assert hf_clip.preprocessing(None, False)["image"].startswith("pad to a square with the image mean (LLaVA's "
                                                                   "expand2square)")
    assert hf.preprocessing("chat-template", True)["prompt"] == "the checkpoint's chat template"


@pytest.mark.skipif(not LLAVA, reason="compares with the original LLaVA's conv_templates")
def test_the_llava_hf_backend_renders_llavas_templates_as_llava_does():
    from llava.conversation import conv_templates

    from llava_avc.backends.hf.prompts import LLAVA_CONVERSATIONS, llava_conversation

    for name in LLAVA_CONVERSATIONS:
        conv = conv_templates[name].copy()
        conv.append_message(conv.roles[0], "<image>\nIs there a dog?")
        conv.append_message(conv.roles[1], None)
        assert llava_conversation(name, "Is there a dog?", "<image>") == conv.get_prompt(), name


@pytest.mark.skipif(not HF_BACKEND, reason="needs the llava-hf backend")
def test_an_unknown_template_on_a_llava_hf_checkpoint_is_refused_before_it_loads(tiny_hf_dir, sample_image, tmp_path):
    image = tmp_path / "image.png"
    sample_image.save(image)
    proc = run_cli("ask", "--model-path", tiny_hf_dir, "--image", image, "--query", "Is there a dog?",
                   "--conv-mode", "bogus")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "llava-avc ask: error: --conv-mode (='bogus') is not available for llava-hf checkpoints; choose "
        "'chat-template' (the checkpoint's own chat template, the default of ask) or one of LLaVA's 'llava_v1', "
        "'vicuna_v1'."]


@pytest.mark.skipif(not LLAVA, reason="needs the original-LLaVA backend")
def test_an_unknown_template_on_an_original_checkpoint_is_refused_before_it_loads(tiny_llava_dir, sample_image,
                                                                                 tmp_path):
    image = tmp_path / "image.png"
    sample_image.save(image)
    proc = run_cli("ask", "--model-path", tiny_llava_dir, "--image", image, "--query", "Is there a dog?",
                   "--conv-mode", "chat-template")
    assert proc.returncode == 2
    assert "--conv-mode (='chat-template') is not one of LLaVA's conversation templates" in proc.stderr
