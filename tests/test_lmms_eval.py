"""llava-avc's methods inside lmms-eval (`--model llava_hf_avc`), through the real `python -m lmms_eval` with
lmms-eval's own POPE task logic over a small local copy of the data (tests/lmms_eval_task.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval", reason="needs lmms-eval (the lmms profile: bash scripts/install.sh --profile lmms)")
import torch  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig  # noqa: E402
from llava_avc.errors import UserError  # noqa: E402
from lmms_eval_task import NEW_TOKENS, POST_PROMPT, make_pope_task, results_of, run_lmms_eval  # noqa: E402


@pytest.fixture(scope="module")
def pope_task(tmp_path_factory, sample_image):
    """(task folder for --include_path, [(question text, PIL image)] in doc order)."""
    return make_pope_task(tmp_path_factory.mktemp("lmms"), sample_image)


@pytest.mark.parametrize("flavour", [(), ("--force_simple",)], ids=["chat", "simple"])
def test_method_none_answers_exactly_as_lmms_evals_own_llava_hf(pope_task, tiny_hf_dir, tmp_path, flavour):
    task, _ = pope_task
    base = f"pretrained={tiny_hf_dir},device_map=cpu"
    theirs = run_lmms_eval(task, tmp_path / "llava_hf", "llava_hf", base, *flavour)
    ours = run_lmms_eval(task, tmp_path / "ours", "llava_hf_avc", f"{base},method=none", *flavour)
    assert ours == theirs
    assert len(set(map(str, theirs.values()))) > 1  # the images and questions make the answers differ


@pytest.fixture(scope="module")
def tiny_onevision_dir(tmp_path_factory):
    """A tiny random LLaVA-OneVision checkpoint (lmms-eval's llava_hf loads it; its processor needs torchvision)."""
    from llava_avc.testing.tiny_families import make_tiny_family

    return make_tiny_family(tmp_path_factory.mktemp("onevision") / "tiny-onevision", "llava_onevision", seed=0)


@pytest.fixture(params=["llava-1.5", "llava-onevision"])
def checkpoint(request, tiny_hf_dir, tiny_onevision_dir):
    return {"llava-1.5": tiny_hf_dir, "llava-onevision": tiny_onevision_dir}[request.param]


def test_method_avc_answers_as_llava_avc_generate_and_records_the_method(pope_task, checkpoint, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    task, docs = pope_task
    out = tmp_path / "avc"
    answers = run_lmms_eval(task, out, "llava_hf_avc",
                         f"pretrained={checkpoint},device_map=cpu,method=avc,alpha=1.5,gamma=0.4")
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    eos = processor.tokenizer.eos_token_id
    for doc_id, (question, image) in enumerate(docs):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question + POST_PROMPT}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            out_ids = llava_avc.generate(model, **inputs, avc=AVCConfig(alpha=1.5, gamma=0.4), do_sample=False,
                                         max_new_tokens=NEW_TOKENS, pad_token_id=eos, eos_token_id=eos)
        expected = processor.tokenizer.decode(out_ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert answers[doc_id] == expected.strip(), doc_id  # lmms-eval's filtered responses are stripped
    config = results_of(out)["config"]
    assert config["model"] == "llava_hf_avc" and "method=avc,alpha=1.5,gamma=0.4" in config["model_args"]


@pytest.mark.parametrize("model_args", ["method=avc", "method=vcd,seed=7"], ids=["avc", "vcd-seeded"])
def test_batch_size_4_answers_as_batch_size_1(pope_task, tiny_hf_dir, tmp_path, model_args):
    task, _ = pope_task
    args = f"pretrained={tiny_hf_dir},device_map=cpu,{model_args}"
    one = run_lmms_eval(task, tmp_path / "one", "llava_hf_avc", args)
    four = run_lmms_eval(task, tmp_path / "four", "llava_hf_avc", args, "--batch_size", "4")
    assert four == one


@pytest.mark.parametrize("flavour", [(), ("--force_simple",)], ids=["chat", "simple"])
def test_llava_onevision_method_none_answers_as_lmms_evals_own_llava_hf(pope_task, tiny_onevision_dir, tmp_path,
                                                                       flavour):
    task, _ = pope_task
    base = f"pretrained={tiny_onevision_dir},device_map=cpu"
    theirs = run_lmms_eval(task, tmp_path / "llava_hf", "llava_hf", base, *flavour)
    assert run_lmms_eval(task, tmp_path / "ours", "llava_hf_avc", f"{base},method=none", *flavour) == theirs
    assert len(set(map(str, theirs.values()))) > 1


def test_llava_next_checkpoints_run_every_method(pope_task, tiny_hf_next_dir, tmp_path):
    task, _ = pope_task
    base = f"pretrained={tiny_hf_next_dir},device_map=cpu"
    theirs = run_lmms_eval(task, tmp_path / "llava_hf", "llava_hf", base, "--force_simple")
    assert run_lmms_eval(task, tmp_path / "none", "llava_hf_avc", f"{base},method=none", "--force_simple") == theirs
    assert run_lmms_eval(task, tmp_path / "m3id", "llava_hf_avc", f"{base},method=m3id,lam=0.05", "--force_simple") \
        != theirs


@pytest.mark.parametrize("model_args, message", [
    ({}, r"--model_args needs method= \(one of avc, vcd, m3id, none\)"),
    ({"method": "avcc"}, r"unknown method 'avcc'\. Did you mean 'avc'\?"),
    ({"method": "avc", "alpah": 1}, r"--model_args alpah=1 is not a model_arg of llava_hf_avc: method avc takes "
                                    r"alpha, beta, gamma, lam, masking, noise_seed; llava_hf takes pretrained"),
    ({"method": "vcd", "gamma": 0.5}, r"gamma=0.5 is not a model_arg of llava_hf_avc: method vcd takes"),
    ({"method": "avc", "alpha": -1}, r"AVCConfig: `alpha` \(=-1.0\) must be"),
    ({"method": "none", "seed": "x"}, r"--model_args seed \(='x'\) must be a non-negative integer"),
])
def test_bad_model_args_are_one_line_before_anything_loads(model_args, message):
    from llava_avc.interfaces.lmms_eval_models import LlavaHfAvcChat

    with pytest.raises(UserError, match=message) as error:
        LlavaHfAvcChat(pretrained="/nonexistent/never-loaded", **model_args)
    assert "\n" not in str(error.value)


def test_a_bad_model_arg_reaches_lmms_evals_log_as_our_one_line(pope_task, tiny_hf_dir, tmp_path):
    task, _ = pope_task
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "llava_hf_avc", "--model_args",
                           f"pretrained={tiny_hf_dir},method=avc,alpha=-1", "--tasks", "pope_local", "--include_path",
                           str(task), "--device", "cpu", "--output_path", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert "AVCConfig: `alpha` (=-1.0) must be" in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("*_results.json"))
