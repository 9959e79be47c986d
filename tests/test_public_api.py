"""The public Python API on every backend this profile has: `llava_avc.generate`, `contrastive_generate`,
`lean_generate`, `find_blind_tokens`, on the backends' own tiny in-memory models (the doctor's,
`llava_avc.backends.<name>.self_check`: random weights, the real LLaVA / transformers classes)."""

from __future__ import annotations

import importlib
import importlib.util
import warnings

import pytest
import torch
import transformers

import llava_avc
from llava_avc import AVCConfig, M3IDConfig, NonFiniteLogitsError, VCDConfig
from llava_avc.backends.versions import HF_OLDEST, version_tuple

BACKENDS = [name for name, available in (("llava", importlib.util.find_spec("llava") is not None),
                                          ("hf", version_tuple(transformers.__version__) >= HF_OLDEST)) if available]
NEW_TOKENS = 3


@pytest.fixture(scope="module", params=BACKENDS)
def case(request):
    """The backend's first in-memory case: (model, generate kwargs with `images` / `pixel_values`)."""
    return importlib.import_module(f"llava_avc.backends.{request.param}").self_check_cases()[0]


def _images(case) -> dict:
    """The case's image inputs under the names `contrastive_generate` takes (images=, image_sizes=)."""
    inputs = dict(case.inputs)
    images = inputs.pop("images", None)
    images = inputs.pop("pixel_values") if images is None else images
    return {"input_ids": inputs.pop("input_ids"), "images": images, "image_sizes": inputs.pop("image_sizes", None),
            "attention_mask": inputs.pop("attention_mask")}


@pytest.mark.parametrize("config", [AVCConfig(), VCDConfig(), M3IDConfig(lam=0.5)], ids=lambda c: c.method)
def test_contrastive_generate_equals_generate_with_the_method_on_every_backend(case, config):
    expected = llava_avc.generate(case.model, **case.inputs, **{config.method: config}, do_sample=False,
                                  max_new_tokens=NEW_TOKENS)
    inputs = _images(case)
    got = llava_avc.contrastive_generate(case.model, inputs.pop("input_ids"), config=config, do_sample=False,
                                         max_new_tokens=NEW_TOKENS, **inputs)
    assert torch.equal(got, expected)
    sequential = llava_avc.contrastive_generate(case.model, _images(case)["input_ids"], config=config, sequential=True,
                                                do_sample=False, max_new_tokens=NEW_TOKENS,
                                                **{k: v for k, v in _images(case).items() if k != "input_ids"})
    assert torch.equal(sequential, expected)


def test_lean_generate_equals_the_models_own_greedy_generate_on_every_backend(case):
    expected = llava_avc.generate(case.model, **case.inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    inputs = _images(case)
    got = llava_avc.lean_generate(case.model, inputs.pop("input_ids"), do_sample=False, max_new_tokens=NEW_TOKENS,
                                  **inputs)
    assert torch.equal(got, expected)


def _nan_image_inputs(case) -> dict:
    inputs = dict(case.inputs)
    key = "images" if "images" in inputs else "pixel_values"
    inputs[key] = torch.full_like(inputs[key], float("nan"))
    return inputs


def test_nan_logits_in_the_original_branch_stop_decoding_with_the_branch_named(case):
    """M3ID's unconditioned branch never sees the image: NaN pixels make only the ORIGINAL branch NaN,
    which used to pass silently (the contrast of NaN picked token 0)."""
    with pytest.raises(NonFiniteLogitsError, match=r"^non-finite original logits at step 0 in rows \[0\]") as caught:
        llava_avc.generate(case.model, **_nan_image_inputs(case), m3id=M3IDConfig(), do_sample=False,
                           max_new_tokens=NEW_TOKENS)
    assert caught.value.branch == "original" and caught.value.rows == [0]


def test_nan_logits_stop_the_lean_loop_too(case):
    inputs = _images(case)
    inputs["images"] = torch.full_like(inputs["images"], float("nan"))
    with pytest.raises(NonFiniteLogitsError, match="non-finite original logits at step 0"):
        llava_avc.lean_generate(case.model, inputs.pop("input_ids"), do_sample=False, max_new_tokens=NEW_TOKENS,
                                **inputs)


@pytest.mark.parametrize("config", [VCDConfig(), M3IDConfig()], ids=lambda c: c.method)
def test_find_blind_tokens_with_another_methods_config_says_blind_tokens_are_avcs(case, config):
    inputs = _images(case)
    with pytest.raises(TypeError, match=rf"^find_blind_tokens: config \(={type(config).__name__}\) must be an "
                                        r"AVCConfig: blind tokens are AVC's"):
        llava_avc.find_blind_tokens(case.model, inputs["input_ids"], inputs["images"], inputs["image_sizes"],
                                    config=config, attention_mask=inputs["attention_mask"])


def test_find_blind_tokens_gives_one_record_per_row_with_the_image_span(case):
    inputs = _images(case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = llava_avc.find_blind_tokens(case.model, inputs["input_ids"], inputs["images"], inputs["image_sizes"],
                                              config=AVCConfig(), attention_mask=inputs["attention_mask"])
    (record,) = records
    start, end = record.image_span
    assert end - start == record.blind.numel() == record.scores.numel() and record.layers


@pytest.mark.skipif("hf" not in BACKENDS, reason="needs the llava-hf backend")
def test_pixels_of_the_other_llava_class_processor_are_one_line_naming_both_classes():
    """A LLaVA-1.5 checkpoint loaded as LlavaNextForConditionalGeneration (or the reverse) gets the other
    processor's pixels: one ValueError naming both, not a TypeError from inside the model."""
    from llava_avc.backends.hf.self_check import self_check_cases

    llava, llava_next = self_check_cases()
    with pytest.raises(ValueError, match=r"^pixel_values \(1, 3, 56, 56\) without image sizes come from the processor "
                                         r"of a LlavaForConditionalGeneration, and the model is a "
                                         r"LlavaNextForConditionalGeneration, which takes 5-dimensional pixel_values "
                                         r"with image_sizes"):
        llava_avc.generate(llava_next.model, **llava.inputs, avc=AVCConfig(), max_new_tokens=NEW_TOKENS)
    with pytest.raises(ValueError, match=r"^pixel_values \(1, 3, 3, 56, 56\) with image sizes come from the processor "
                                         r"of a LlavaNextForConditionalGeneration / "
                                         r"LlavaOnevisionForConditionalGeneration, and the model is a "
                                         r"LlavaForConditionalGeneration"):
        llava_avc.generate(llava.model, **llava_next.inputs, avc=AVCConfig(), max_new_tokens=NEW_TOKENS)


def test_using_llava_avcs_public_names_changes_nothing_in_transformers():
    """No effect at a distance: reading `llava_avc.generate` & co. wraps no transformers method and leaves
    no import hook behind (the patch of LLaVA's class is `patch_llava()`'s, called by the user)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from transformers.generation.utils import GenerationMixin\n"
            "before = dict(vars(GenerationMixin))\n"
            "hooks = list(sys.meta_path)\n"
            "import llava_avc\n"
            "llava_avc.AVCConfig, llava_avc.generate, llava_avc.find_blind_tokens, llava_avc.register_method\n"
            "print(dict(vars(GenerationMixin)) == before, sys.meta_path == hooks)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True"]
