"""llava-avc's methods inside lmms-eval (`--model llava_hf_avc`), through the real `python -m lmms_eval` with
lmms-eval's own POPE task logic (its prompt, its processing of answers, its metrics) over a small local copy
of the data: the packaged POPE questions and generated images in a parquet file, served by a task folder
under `--include_path` whose functions are the installed `lmms_eval.tasks.pope.utils`.

lmms-eval exits 0 even when the evaluation fails ("Error during evaluation" in the log): every run here reads
the samples and results files it wrote instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="needs lmms-eval (the lmms profile: bash scripts/install.sh --profile lmms)")
import torch  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig  # noqa: E402
from llava_avc.errors import UserError  # noqa: E402
from llava_avc.eval.questions import load_pope  # noqa: E402

QUESTIONS = 8
NEW_TOKENS = 8
#: lmms-eval's POPE prompt (tasks/pope/pope.yaml: no pre-prompt, this post-prompt).
POST_PROMPT = "\nAnswer the question using a single word or phrase."
TASK_YAML = """dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {parquet}
task: pope_local
test_split: test
output_type: generate_until
doc_to_visual: !function utils.pope_doc_to_visual
doc_to_text: !function utils.pope_doc_to_text
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: {tokens}
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
process_results: !function utils.pope_process_results
metric_list:
  - metric: pope_accuracy
    aggregation: !function utils.pope_aggregate_accuracy
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "{post}"
metadata:
  - version: 0.0
"""
TASK_UTILS = ("from lmms_eval.tasks.pope.utils import (  # noqa: F401  lmms-eval's own POPE logic\n"
              "    pope_aggregate_accuracy, pope_doc_to_text, pope_doc_to_visual, pope_process_results)\n")


def _image(index: int, sample_image):
    """Distinct images for the questions' image names: the sample photo turned and cropped."""
    width, height = sample_image.size
    return sample_image.rotate(90 * (index % 4), expand=True).crop((0, 0, width - 7 * index, height - 5 * index))


@pytest.fixture(scope="module")
def pope_task(tmp_path_factory, sample_image):
    """(task folder for --include_path, [(question text, PIL image)] in doc order)."""
    import datasets

    root = tmp_path_factory.mktemp("lmms")
    questions = load_pope("coco_pope_random")[:QUESTIONS]
    names = list(dict.fromkeys(question.image for question in questions))
    images = {name: _image(index, sample_image) for index, name in enumerate(names)}
    data = {"question_id": [str(q.qid) for q in questions], "question": [q.text for q in questions],
            "answer": [q.label for q in questions], "category": [q.category for q in questions],
            "image_source": [q.image for q in questions], "image": [images[q.image] for q in questions]}
    parquet = root / "pope.parquet"
    datasets.Dataset.from_dict(data).cast_column("image", datasets.Image()).to_parquet(str(parquet))
    task = root / "pope_local"
    task.mkdir()
    (task / "pope_local.yaml").write_text(TASK_YAML.format(parquet=parquet, tokens=NEW_TOKENS,
                                                           post=POST_PROMPT.replace("\n", "\\n")))
    (task / "utils.py").write_text(TASK_UTILS)
    return task, [(q.text, images[q.image]) for q in questions]


def _lmms_eval(task: Path, out: Path, model: str, model_args: str, *extra) -> dict:
    """{doc_id: answer} of one real lmms-eval run (its samples file), after checking it did not fail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(out.parent / "hf-home")}
    command = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args, "--tasks",
               "pope_local", "--include_path", str(task), "--device", "cpu", "--batch_size", "1",
               "--log_samples", "--output_path", str(out), *extra]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Error during evaluation" not in log, log[-4000:]
    samples = sorted(out.rglob("*_samples_pope_local.jsonl"))
    assert len(samples) == 1, (sorted(p.name for p in out.rglob("*")), log[-3000:])
    records = [json.loads(line) for line in samples[0].read_text().splitlines()]
    assert [record["doc_id"] for record in records] == list(range(QUESTIONS))
    return {record["doc_id"]: record["filtered_resps"] for record in records}


def _results(out: Path) -> dict:
    (results,) = sorted(out.rglob("*_results.json"))
    return json.loads(results.read_text())


@pytest.mark.parametrize("flavour", [(), ("--force_simple",)], ids=["chat", "simple"])
def test_method_none_answers_exactly_as_lmms_evals_own_llava_hf(pope_task, tiny_hf_dir, tmp_path, flavour):
    task, _ = pope_task
    base = f"pretrained={tiny_hf_dir},device_map=cpu"
    theirs = _lmms_eval(task, tmp_path / "llava_hf", "llava_hf", base, *flavour)
    ours = _lmms_eval(task, tmp_path / "ours", "llava_hf_avc", f"{base},method=none", *flavour)
    assert ours == theirs
    assert len(set(map(str, theirs.values()))) > 1  # the images and questions make the answers differ


def test_method_avc_answers_as_llava_avc_generate_and_records_the_method(pope_task, tiny_hf_dir, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    task, docs = pope_task
    out = tmp_path / "avc"
    answers = _lmms_eval(task, out, "llava_hf_avc",
                         f"pretrained={tiny_hf_dir},device_map=cpu,method=avc,alpha=1.5,gamma=0.4")
    model = LlavaForConditionalGeneration.from_pretrained(tiny_hf_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_hf_dir)
    eos = processor.tokenizer.eos_token_id
    for doc_id, (question, image) in enumerate(docs):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question + POST_PROMPT}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            out_ids = llava_avc.generate(model, **inputs, avc=AVCConfig(alpha=1.5, gamma=0.4), do_sample=False,
                                         max_new_tokens=NEW_TOKENS, pad_token_id=eos, eos_token_id=eos)
        expected = processor.tokenizer.decode(out_ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert answers[doc_id] == expected, doc_id
    config = _results(out)["config"]
    assert config["model"] == "llava_hf_avc" and "method=avc,alpha=1.5,gamma=0.4" in config["model_args"]


@pytest.mark.parametrize("model_args", ["method=avc", "method=vcd,seed=7"], ids=["avc", "vcd-seeded"])
def test_batch_size_4_answers_as_batch_size_1(pope_task, tiny_hf_dir, tmp_path, model_args):
    task, _ = pope_task
    args = f"pretrained={tiny_hf_dir},device_map=cpu,{model_args}"
    one = _lmms_eval(task, tmp_path / "one", "llava_hf_avc", args)
    four = _lmms_eval(task, tmp_path / "four", "llava_hf_avc", args, "--batch_size", "4")
    assert four == one


def test_llava_next_checkpoints_run_every_method(pope_task, tiny_hf_next_dir, tmp_path):
    task, _ = pope_task
    base = f"pretrained={tiny_hf_next_dir},device_map=cpu"
    theirs = _lmms_eval(task, tmp_path / "llava_hf", "llava_hf", base, "--force_simple")
    assert _lmms_eval(task, tmp_path / "none", "llava_hf_avc", f"{base},method=none", "--force_simple") == theirs
    assert _lmms_eval(task, tmp_path / "m3id", "llava_hf_avc", f"{base},method=m3id,lam=0.05", "--force_simple") \
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
