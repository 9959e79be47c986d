"""Evaluation at scale: answers depend only on (seed, question, configuration), whether one process or
two under the real torchrun, batch size 1 or 3, uninterrupted or killed and resumed; `--seeds` runs
one folder per seed. The paper protocol SAMPLES (T=1), so these equalities are not greedy luck."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import BENCHMARKS

QUESTIONS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_image):
    """The first 6 POPE questions (3 images, made here) in a question file."""
    root = tmp_path_factory.mktemp("scale")
    lines = (BENCHMARKS / "pope" / "coco_pope_random.json").read_text().splitlines()[:QUESTIONS]
    (root / "q.json").write_text("\n".join(lines) + "\n")
    (root / "images").mkdir()
    width, height = sample_image.size
    variants = [sample_image, sample_image.rotate(90, expand=True), sample_image.crop((0, 0, width, height // 2))]
    for name, image in zip(dict.fromkeys(json.loads(line)["image"] for line in lines), variants):
        image.save(root / "images" / name)
    return root


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _eval_argv(model, data: Path, out: Path, *extra) -> list:
    return ["-m", "llava_avc", "eval", "pope", "--model-path", str(model), "--question-file", str(data / "q.json"),
            "--image-folder", str(data / "images"), "--out", str(out), "--method", "vcd", "--protocol", "paper",
            "--max-new-tokens", "6", "--device", "cpu", *map(str, extra)]


def _run(argv: list, launcher: list = (), **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *launcher, *argv], capture_output=True, text=True, env=_env(),
                          timeout=900, **kwargs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _texts(path: Path) -> dict:
    return {record["question_id"]: record["text"] for record in map(json.loads, path.read_text().splitlines())}


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def model(request):
    """The tiny checkpoint of the backend this profile has: original LLaVA where llava-torch is installed,
    else llava-hf (transformers 5)."""
    name = "tiny_llava_dir" if importlib.util.find_spec("llava") is not None else "tiny_hf_dir"
    return request.getfixturevalue(name)


@pytest.fixture(scope="module")
def reference(model, data):
    """One process, batch size 1: the answers everything else must equal."""
    _run(_eval_argv(model, data, data / "single"))
    texts = _texts(data / "single" / "answers.jsonl")
    assert len(texts) == QUESTIONS and len(set(texts.values())) > 1
    return texts


def test_batch_size_does_not_change_a_sampled_answer(model, data, reference):
    _run(_eval_argv(model, data, data / "batched", "--batch-size", 3))
    assert _texts(data / "batched" / "answers.jsonl") == reference


def test_torchrun_with_two_processes_gives_the_single_process_answers(model, data, reference):
    proc = _run(_eval_argv(model, data, data / "torchrun", "--batch-size", 2), launcher=TORCHRUN)
    out = data / "torchrun"
    for rank in range(2):
        assert (out / f"answers.chunk{rank}of2.jsonl").is_file()
        assert (out / f"answers.chunk{rank}of2.jsonl.done.json").is_file()
    assert _texts(out / "answers.jsonl") == reference
    assert "merged 2 shards" in proc.stdout
    assert "Accuracy" in proc.stdout or "accuracy" in proc.stdout  # rank 0 scored the merged answers


def _kill(pid: int) -> None:
    """SIGKILL `pid` and wait until it is gone (its answers-file lock released)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        stat = Path(f"/proc/{pid}/stat")
        if stat.is_file() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return  # dead, not yet reaped (its files, the lock included, are closed)
        time.sleep(0.02)


def test_a_killed_torchrun_run_resumes_with_every_answer_once(model, data, reference):
    out, stalled = data / "killed", data / "stalled-rank"
    argv = _eval_argv(model, data, out)
    stall = [str(Path(__file__).with_name("stall_after.py")), "1", str(stalled), "--", *argv[2:]]  # not -m llava_avc
    process = subprocess.Popen([sys.executable, *TORCHRUN, *stall], env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if all(Path(f"{stalled}{rank}").is_file() for rank in range(2)):
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher, and every rank right after its first answer
    for rank in range(2):
        _kill(int(Path(f"{stalled}{rank}").read_text()))
    process.wait(timeout=60)
    assert not (out / "answers.jsonl").exists()
    assert [(out / f"answers.chunk{rank}of2.jsonl").read_text().count("\n") for rank in range(2)] == [1, 1]
    _run(argv, launcher=TORCHRUN)
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert sorted(record["question_id"] for record in records) == sorted(reference)  # each question once
    assert _texts(out / "answers.jsonl") == reference


def test_seeds_run_one_folder_per_seed_and_each_equals_its_single_run(model, data, reference):
    _run(_eval_argv(model, data, data / "seeds", "--seeds", "42,7"))
    assert _texts(data / "seeds" / "seed42" / "answers.jsonl") == reference  # 42 is the default --seed
    _run(_eval_argv(model, data, data / "seed7", "--seed", 7))
    seven = _texts(data / "seed7" / "answers.jsonl")
    assert _texts(data / "seeds" / "seed7" / "answers.jsonl") == seven and seven != reference


def test_chunk_flags_under_a_launcher_are_refused(model, data):
    proc = subprocess.run([sys.executable, *TORCHRUN, *_eval_argv(model, data, data / "x", "--num-chunks", 2)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode != 0 and "the launcher shards the questions itself; drop those flags" in proc.stderr
