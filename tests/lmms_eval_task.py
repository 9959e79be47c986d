"""A local lmms-eval task for the lmms-eval tests: lmms-eval's own POPE logic (its prompt, its processing of
answers, its metrics) over the packaged POPE questions and generated images in a parquet file, served by a
task folder under `--include_path` whose functions are the installed `lmms_eval.tasks.pope.utils`; and one
real `python -m lmms_eval` run on it.

lmms-eval exits 0 even when the evaluation fails ("Error during evaluation" in the log): a run here reads
the samples and results files it wrote instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llava_avc.eval.questions import load_pope

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


def make_pope_task(root: Path, sample_image) -> tuple:
    """(task folder for --include_path, [(question text, PIL image)] in doc order), written under `root`."""
    import datasets

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


def run_lmms_eval(task: Path, out: Path, model: str, model_args: str, *extra,
                  launcher: tuple = ("-m", "lmms_eval")) -> dict:
    """{doc_id: answer} of one real lmms-eval run (its samples file), after checking it did not fail.
    `launcher`: what follows the python executable (default `-m lmms_eval`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(out.parent / "hf-home")}
    command = [sys.executable, *launcher, "--model", model, "--model_args", model_args, "--tasks",
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


def results_of(out: Path) -> dict:
    (results,) = sorted(out.rglob("*_results.json"))
    return json.loads(results.read_text())
