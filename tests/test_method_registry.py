"""A method is one registry entry: a fourth method defined outside the package (tests/text_contrast.py)
is registered and then runs through `llava_avc.generate` on both backends (and transformers'
`generate(custom_generate=...)`), and through `llava-avc ask --method` with its own generated flag."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import transformers

import llava_avc
from llava_avc.backends.versions import HF_OLDEST, version_tuple

from text_contrast import METHOD, TextContrastConfig

BACKENDS = [name for name, available in (("llava", importlib.util.find_spec("llava") is not None),
                                          ("hf", version_tuple(transformers.__version__) >= HF_OLDEST)) if available]
SCRIPT = Path(__file__).with_name("text_contrast.py")


@pytest.fixture
def registered():
    llava_avc.register_method(METHOD)
    yield METHOD
    llava_avc.unregister_method(METHOD.name)


@pytest.fixture(params=BACKENDS)
def case(request):
    return importlib.import_module(f"llava_avc.backends.{request.param}").self_check_cases()[0], request.param


def _reference_scores(model, backend: str, inputs: dict, config: TextContrastConfig) -> torch.Tensor:
    """The first step's scores from the equations, with the models' own forwards (no llava-avc code)."""
    ids = inputs["input_ids"]
    if backend == "hf":
        with_image = model(**inputs).logits[:, -1].float()
        text_ids = ids[ids != model.config.image_token_id].unsqueeze(0)
    else:
        from llava.constants import IMAGE_TOKEN_INDEX

        with_image = model(input_ids=ids, images=inputs["images"], image_sizes=inputs["image_sizes"]).logits[:, -1]
        text_ids = ids[ids != IMAGE_TOKEN_INDEX].unsqueeze(0)
    text_only = model(input_ids=text_ids).logits[:, -1].float()
    scores = (1 + config.alpha) * with_image.float() - config.alpha * text_only
    cutoff = torch.log(torch.tensor(config.beta)) + with_image.float().max(-1, keepdim=True).values
    return scores.masked_fill(with_image.float() < cutoff, float("-inf"))


def test_a_registered_method_runs_through_generate_on_every_backend(registered, case):
    (case, backend) = case
    config = TextContrastConfig(alpha=1.5, beta=0.2)
    with torch.no_grad():
        out = llava_avc.generate(case.model, **case.inputs, textcd=config, do_sample=False, max_new_tokens=3,
                                 return_dict_in_generate=True, output_scores=True)
        expected = _reference_scores(case.model, backend, case.inputs, config)
    first = out.scores[0]
    assert torch.equal(torch.isinf(first), torch.isinf(expected))
    torch.testing.assert_close(first[torch.isfinite(first)], expected[torch.isfinite(expected)], atol=1e-4, rtol=1e-4)
    assert int(torch.isfinite(first).sum()) > 1  # a cutoff that keeps one token could not tell contrasts apart
    with torch.no_grad():  # at zero strength, the model's own greedy decoding
        zero = llava_avc.generate(case.model, **case.inputs, textcd=TextContrastConfig(alpha=0.0), do_sample=False,
                                  max_new_tokens=3)
        plain = llava_avc.generate(case.model, **case.inputs, do_sample=False, max_new_tokens=3)
    assert torch.equal(zero, plain)


@pytest.mark.skipif("hf" not in BACKENDS, reason="needs the llava-hf backend")
def test_a_registered_method_is_a_keyword_of_transformers_generate(registered):
    from llava_avc.backends.hf.self_check import self_check_cases

    case = self_check_cases()[0]
    config = TextContrastConfig(alpha=1.0)
    with torch.no_grad():
        ours = case.model.generate(**case.inputs, custom_generate=llava_avc.hf.contrastive_decoding, textcd=config,
                                   do_sample=False, max_new_tokens=3)
        expected = llava_avc.generate(case.model, **case.inputs, textcd=config, do_sample=False, max_new_tokens=3)
    assert torch.equal(ours, expected)


def test_an_unregistered_method_is_not_a_keyword(case):
    (case, _) = case
    with pytest.raises((ValueError, TypeError), match="textcd"):
        llava_avc.generate(case.model, **case.inputs, textcd=TextContrastConfig(), max_new_tokens=2)


def test_registration_refuses_a_taken_name_and_a_config_without_flag_metadata():
    with pytest.raises(ValueError, match="a method named 'avc' is already registered"):
        llava_avc.register_method(llava_avc.Method("avc", type("AvcAgain", (TextContrastConfig,), {"method": "avc"}),
                                                   METHOD.prefill, METHOD.combine))

    @dataclass(frozen=True)
    class Bare(llava_avc.MethodConfig):
        method: ClassVar[str] = "bare"
        alpha: float = field(default=1.0)

    with pytest.raises(ValueError, match=r"field Bare.alpha lacks metadata \['help', 'constraint'\]"):
        llava_avc.register_method(llava_avc.Method("bare", Bare, METHOD.prefill, METHOD.combine))


def test_ask_runs_a_registered_method_with_its_generated_flags(request, sample_image, tmp_path):
    checkpoint = request.getfixturevalue("tiny_hf_dir" if "hf" in BACKENDS else "tiny_llava_dir")
    image = tmp_path / "image.png"
    sample_image.save(image)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = ["ask", "--model-path", str(checkpoint), "--image", str(image), "--query", "Is there a dog?",
            "--max-new-tokens", "4"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv, "--method", "textcd", "--textcd-alpha", "2.0"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[0] == "method: textcd"
    llava_avc.register_method(METHOD)
    try:
        from llava_avc.interfaces.ask import ask

        expected = ask(str(checkpoint), str(image), "Is there a dog?", method="textcd",
                       config=TextContrastConfig(alpha=2.0), max_new_tokens=4, device="cpu")
    finally:
        llava_avc.unregister_method(METHOD.name)
    assert proc.stdout.strip() == expected.answer
    usage = subprocess.run([sys.executable, str(SCRIPT), "ask", "--help"], capture_output=True, text=True, env=env)
    assert "--textcd-alpha" in usage.stdout and "textcd" in usage.stdout
