"""Records, resumes and scores that never mislead (through `python -m llava_avc`): every benchmark checks
its question source's shape before anything loads, `score` refuses answers of another benchmark, and
every table and JSON is in one unit, named in its header."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import transformers

from llava_avc.backends.versions import HF_OLDEST, version_tuple

from helpers import BENCHMARKS

HF_BACKEND = version_tuple(transformers.__version__) >= HF_OLDEST
LLAVA = importlib.util.find_spec("llava") is not None


def run_cli(*argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llava_avc", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600)


def one_line_error(proc, command: str, after_load: bool = False) -> str:
    """The one error line (exit 2); `after_load`: a refusal that needs the model comes last, after what the
    loaders print (the "loaded" line; transformers 4.37's hub-library warnings)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    if after_load:
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith(f"llava-avc {command}: error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(request):
    """A tiny checkpoint of the backend this profile serves (llava-hf where it can, else original LLaVA)."""
    name = "tiny_hf_dir" if HF_BACKEND else "tiny_llava_dir"
    return request.getfixturevalue(name)


def pope_inputs(folder, sample_image, count: int):
    """The first `count` POPE questions (with labels) and an image folder holding their images."""
    lines = (BENCHMARKS / "pope" / "coco_pope_random.json").read_text().splitlines()[:count]
    questions = folder / f"pope{count}.json"
    questions.write_text("\n".join(lines) + "\n")
    images = folder / "images"
    images.mkdir()
    for name in {json.loads(line)["image"] for line in lines}:
        sample_image.save(images / name)
    return questions, images


@pytest.fixture
def pope_run_inputs(tmp_path, sample_image):
    return pope_inputs(tmp_path, sample_image, 3)


# ---- 5. a question source of another benchmark -------------------------------------------------------------

def test_a_pope_question_file_given_to_eval_mme_is_refused_before_anything_loads(checkpoint, pope_run_inputs,
                                                                                  tmp_path):
    questions, images = pope_run_inputs
    line = one_line_error(run_cli("eval", "mme", "--model-path", checkpoint, "--question-file", questions,
                                  "--image-folder", images, "--out", tmp_path / "run"), "eval")
    assert "question 1 belongs to no MME sub-task (category '1')" in line
    assert f"{questions} is not an MME question source" in line
    assert not (tmp_path / "run").exists()


def test_an_amber_file_of_other_ids_is_refused(checkpoint, tmp_path):
    queries = tmp_path / "query_other.json"
    queries.write_text(json.dumps([{"id": "a1", "image": "x.jpg", "query": "Describe this image."}]))
    (tmp_path / "images").mkdir()
    line = one_line_error(run_cli("eval", "amber", "--model-path", checkpoint, "--question-file", queries,
                                  "--image-folder", tmp_path / "images", "--out", tmp_path / "run"), "eval")
    assert "AMBER query id 'a1' is not a positive integer" in line


def _answers_of_pope_made_for_mme(folder):
    """What `eval mme` on a POPE file wrote before it was refused: POPE ids under benchmark "mme"."""
    folder.mkdir(parents=True)
    records = [{"question_id": qid, "prompt": "Is there a dog?", "text": "Yes", "answer_id": str(qid), "model_id": "m",
                "metadata": {"config_hash": "h", "benchmark": "mme", "method": "none", "protocol": "paper",
                             "image": "COCO_val2014_000000310196.jpg", "label": "yes", "category": str(qid)}}
               for qid in (1, 2, 3)]
    (folder / "answers.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


def test_score_mme_refuses_answers_that_are_not_mme_answers(tmp_path):
    line = one_line_error(run_cli("score", "mme", "--answers-file", _answers_of_pope_made_for_mme(tmp_path / "r")),
                          "score")
    assert "the answer to question 1 belongs to no MME sub-task (category '1'" in line
    assert "these are not MME answers" in line


# ---- 6. a POPE question without its label -------------------------------------------------------------------

def test_a_pope_question_without_a_label_is_refused_at_eval_start(checkpoint, pope_run_inputs, tmp_path):
    questions, images = pope_run_inputs
    lines = questions.read_text().splitlines()
    record = json.loads(lines[1])
    del record["label"]
    lines[1] = json.dumps(record)
    questions.write_text("\n".join(lines) + "\n")
    line = one_line_error(run_cli("eval", "pope", "--model-path", checkpoint, "--question-file", questions,
                                  "--image-folder", images, "--out", tmp_path / "run"), "eval")
    assert f"{questions}, line 2: POPE question {record['question_id']} has no 'label'" in line
    assert not (tmp_path / "run").exists()


# ---- 7. one unit everywhere ----------------------------------------------------------------------------------

def _pope_answers(folder, wrong: set, seed: int = 42):
    """Answers to the four questions 1..4 (labels yes, no, yes, no), wrong where listed, with run.json."""
    folder.mkdir(parents=True)
    records = []
    for qid in range(1, 5):
        label = "yes" if qid % 2 else "no"
        right = label.capitalize()
        text = ("No" if label == "yes" else "Yes") if qid in wrong else right
        records.append({"question_id": qid, "prompt": "q", "text": text, "answer_id": str(qid), "model_id": "m",
                        "metadata": {"config_hash": "h", "benchmark": "pope", "method": "avc", "protocol": "paper",
                                     "label": label, "category": "random"}})
    (folder / "answers.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    (folder / "run.json").write_text(json.dumps({"benchmark": "pope", "method": "avc", "protocol": "paper",
                                                 "seed": seed, "settings": {"seed": seed, "method": "avc"}}))
    return folder


def test_a_single_run_reports_percent_like_seeds_and_comparisons(tmp_path):
    single = _pope_answers(tmp_path / "single", wrong={1})  # 3 of 4 right: accuracy 75 percent
    proc = run_cli("score", "pope", "--answers-file", single)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("POPE (percent), answer rule: ")
    row = next(line for line in proc.stdout.splitlines() if line.startswith("random"))
    assert row.split()[:3] == ["random", "4", "75.00"]
    data = json.loads(run_cli("score", "pope", "--answers-file", single, "--json").stdout)
    assert data["unit"] == "percent" and data["random"]["accuracy"] == 75.0
    for seed, wrong in ((42, {1}), (43, set())):
        _pope_answers(tmp_path / "seeds" / f"seed{seed}", wrong, seed)
    seeds = run_cli("score", "pope", "--answers-file", tmp_path / "seeds")
    assert seeds.stdout.startswith("POPE (percent), 2 seeds (mean ± sample std)")
    compare = run_cli("score", "pope", "--compare", single, tmp_path / "seeds")
    assert compare.stdout.startswith("POPE (percent):")
    assert json.loads(run_cli("score", "pope", "--compare", single, tmp_path / "seeds", "--json").stdout)["unit"] == \
        "percent"


def test_mme_reports_points_with_acc_in_percent(tmp_path):
    folder = tmp_path / "mme"
    folder.mkdir()
    records = [{"question_id": f"existence/{n}.jpg", "prompt": "Is there a dog?", "text": text, "answer_id": str(n),
                "model_id": "m", "metadata": {"config_hash": "h", "benchmark": "mme", "method": "none",
                                              "protocol": "paper", "image": f"existence/{n}.jpg", "label": "yes",
                                              "category": "existence"}}
               for n, text in ((1, "Yes"), (2, "No"))]
    (folder / "answers.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    proc = run_cli("score", "mme", "--answers-file", folder, "--json")
    data = json.loads(proc.stdout)
    # one of two questions right (acc 50 percent), one of two images all right (acc+ 50 percent): 100 points
    assert data["subtasks"]["existence"] == {"score": 100.0, "acc": 50.0, "acc_plus": 50.0, "questions": 2,
                                             "images": 2, "other": 0}
    assert data["unit"].startswith("MME points")
    assert run_cli("score", "mme", "--answers-file", folder).stdout.startswith("MME (MME points: ")


# ---- 1. a hub id: the weights' fingerprint of what was loaded ------------------------------------------------

FAKE_HUB = os.path.join(os.path.dirname(__file__), "fake_hub.py")


def _publish(hub, repo_id: str, revision: str, checkpoint) -> None:
    """Put `checkpoint` on the simulated hub as `revision` of `repo_id`, and make it the current one."""
    import shutil

    folder = hub / repo_id.replace("/", "--")
    shutil.copytree(checkpoint, folder / revision)
    (folder / "main").write_text(revision)


def run_with_hub(hub, cache, *argv):
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, FAKE_HUB, str(hub), "--", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_a_hub_id_run_resumes_after_its_first_download_and_refuses_new_weights(checkpoint, pope_run_inputs, tmp_path):
    questions, images = pope_run_inputs
    hub, cache, out = tmp_path / "hub", tmp_path / "cache", tmp_path / "run"
    repo = "someone/llava-tiny-hf" if HF_BACKEND else "someone/llava-tiny"
    _publish(hub, repo, "a" * 40, checkpoint)
    argv = ["eval", "pope", "--model-path", repo, "--question-file", questions, "--image-folder", images, "--out", out,
            "--max-new-tokens", 2, "--device", "cpu"]
    first = run_with_hub(hub, cache, *argv, "--limit", 1)  # not in the cache: downloaded by this run
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["settings"]["weights"] == "a" * 40  # what was loaded
    resumed = run_with_hub(hub, cache, *argv, "--limit", 2)  # the same run, extended
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 new answers, 1 already there, 2 questions" in resumed.stdout
    _publish(hub, repo, "b" * 40, checkpoint)  # the repository gets a new revision: other weights
    changed = run_with_hub(hub, cache, *argv)  # one question left: the load fetches revision b
    line = one_line_error(changed, "eval", after_load=True)  # the new weights are known once fetched
    assert "were made with a different configuration" in line and f'weights: "{"a" * 40}" -> "{"b" * 40}"' in line


# ---- 4. several seeds, one model load ----------------------------------------------------------------------

def test_eval_with_several_seeds_loads_the_model_once(checkpoint, pope_run_inputs, tmp_path):
    questions, images = pope_run_inputs
    proc = run_cli("eval", "pope", "--model-path", checkpoint, "--question-file", questions, "--image-folder", images,
                   "--out", tmp_path / "run", "--max-new-tokens", 2, "--device", "cpu", "--seeds", "1,2,3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    loads = [line for line in proc.stderr.splitlines() if line.startswith("loaded ")]
    assert len(loads) == 1 and loads[0].startswith(f"loaded {checkpoint} ("), proc.stderr
    for seed in (1, 2, 3):
        assert len((tmp_path / "run" / f"seed{seed}" / "answers.jsonl").read_text().splitlines()) == 3


# ---- 2. shard markers of an earlier run ---------------------------------------------------------------------

def run_rank(rank: int, *argv):
    """One process of a 2-process launcher run, with the variables torchrun sets."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": "2",
           "LOCAL_RANK": str(rank)}
    return subprocess.run([sys.executable, "-m", "llava_avc", *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=600)


def test_a_larger_limit_never_merges_on_the_markers_of_the_smaller_run(checkpoint, tmp_path, sample_image):
    questions, images = pope_inputs(tmp_path, sample_image, 4)
    out = tmp_path / "run"
    argv = ["eval", "pope", "--model-path", checkpoint, "--question-file", questions, "--image-folder", images,
            "--out", out, "--max-new-tokens", 2, "--shard-timeout", 2]
    for rank in (1, 0):  # the finished run of 2 questions: both shards marked done, merged by rank 0
        assert run_rank(rank, *argv, "--limit", 2).returncode == 0
    assert len((out / "answers.jsonl").read_text().splitlines()) == 2
    # The same run with --limit 4: rank 0 finishes its shard first; rank 1's marker is the old run's.
    early = run_rank(0, *argv, "--limit", 4)
    line = one_line_error(early, "eval", after_load=True)
    assert "1 shard(s) not finished after 2 s (answers.chunk1of2.jsonl)" in line and "rerun the same command" in line
    assert run_rank(1, *argv, "--limit", 4).returncode == 0
    last = run_rank(0, *argv, "--limit", 4)
    assert last.returncode == 0, last.stderr[-3000:]
    assert "merged 2 shards" in last.stdout
    assert [json.loads(a)["question_id"] for a in (out / "answers.jsonl").read_text().splitlines()] == \
        [json.loads(line)["question_id"] for line in questions.read_text().splitlines()]


# ---- 3. the record says what was used --------------------------------------------------------------------------

def test_run_json_states_the_prompt_template_and_image_processing_actually_used(checkpoint, pope_run_inputs, tmp_path):
    questions, images = pope_run_inputs
    proc = run_cli("eval", "pope", "--model-path", checkpoint, "--question-file", questions, "--image-folder", images,
                   "--out", tmp_path / "run", "--max-new-tokens", 2, "--protocol", "llava", "--limit", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    how = "the processor's do_pad" if HF_BACKEND else "LLaVA's process_images"
    assert record["preprocessing"] == {
        "backend": "hf" if HF_BACKEND else "llava", "model_type": "llava" if HF_BACKEND else "llava_llama",
        "prompt": "LLaVA conversation template 'vicuna_v1'",
        "image": f"pad to a square with the image mean ({how}), then CLIP resize + center crop"}
    assert record["settings"]["generation"]["conv_mode"] == "vicuna_v1"
    assert record["settings"]["generation"]["center_crop"] is False
