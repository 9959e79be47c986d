"""`llava-avc eval`: real llava-torch on the tiny checkpoint, excerpts of the real POPE / AMBER question files
(tests/fixtures/benchmarks), images made here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from llava_avc.errors import UserError  # noqa: E402
from llava_avc.algorithm.config import AVCConfig, VCDConfig  # noqa: E402
from llava_avc.eval import answers as ans  # noqa: E402
from llava_avc.eval.benchmarks import get_benchmark  # noqa: E402
from llava_avc.backends.llava.pipeline import LlavaPipeline  # noqa: E402
from llava_avc.interfaces.cli import main as eval_main  # noqa: E402
from llava_avc.eval.runner import EvalOptions, merge_chunks, run_eval  # noqa: E402
from llava_avc.eval.score_mme import score_mme  # noqa: E402

from helpers import BENCHMARKS  # noqa: E402

POPE_RANDOM = BENCHMARKS / "pope" / "coco_pope_random.json"
AMBER_QUERIES = BENCHMARKS / "amber" / "query_all.json"
TOKENS = 4


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the tiny model is small and 2 threads collapse on a busy 2-core machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _images(sample_image) -> list:
    width, height = sample_image.size
    return [sample_image, sample_image.crop((0, 0, width, height // 2)).rotate(90, expand=True)]


@pytest.fixture
def pope(tmp_path, sample_image):
    """The first 12 questions of the real coco_pope_random.json and their 2 images (made here)."""
    lines = POPE_RANDOM.read_text().splitlines()[:12]
    questions = tmp_path / "coco_pope_random.json"
    questions.write_text("\n".join(lines) + "\n")
    folder = tmp_path / "val2014"
    folder.mkdir()
    names = list(dict.fromkeys(json.loads(line)["image"] for line in lines))
    for name, image in zip(names, _images(sample_image)):
        image.save(folder / name)
    return {"questions": questions, "images": folder, "names": names, "tmp": tmp_path}


def _options(pope, out, **overrides) -> EvalOptions:
    values = dict(benchmark="pope", model_path=str(pope["model_path"]), out=str(out),
                  image_folder=str(pope["images"]), question_file=str(pope["questions"]), config=AVCConfig(),
                  protocol="paper", max_new_tokens=TOKENS, limit=6, progress=False)
    values.update(overrides)
    return EvalOptions(**values)


@pytest.fixture
def setup(pope, tiny_llava_dir):
    pope["model_path"] = tiny_llava_dir
    return pope


def _lines(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_pope_run_writes_answers_and_run_json_then_resumes(setup, tiny_llava):
    out = setup["tmp"] / "run"
    summary = run_eval(_options(setup, out), pipeline=LlavaPipeline(*tiny_llava))
    assert (summary.new, summary.total) == (6, 6)
    records = _lines(out / "answers.jsonl")
    assert [r["question_id"] for r in records] == [1, 2, 3, 4, 5, 6]
    first = records[0]
    assert set(first) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert first["prompt"] == "Is there a snowboard in the image?"  # paper protocol: the question as given
    assert first["model_id"] == "llava-tiny" and first["metadata"]["label"] == "yes"
    assert first["metadata"]["config_hash"] == summary.config_hash
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "avc" and run["protocol"] == "paper" and run["seed"] == 42
    assert run["config"]["alpha"] == 2.5 and run["device"] == "cpu"
    assert set(run["versions"]) >= {"torch", "transformers", "llava"} and "git_sha" in run
    assert run["settings"]["generation"]["do_sample"] is True
    again = run_eval(_options(setup, out), pipeline=LlavaPipeline(*tiny_llava))
    assert (again.new, again.skipped) == (0, 6)
    assert len(_lines(out / "answers.jsonl")) == 6


def test_rerun_with_another_method_is_refused(setup, tiny_llava):
    out = setup["tmp"] / "run"
    run_eval(_options(setup, out, limit=2), pipeline=LlavaPipeline(*tiny_llava))
    with pytest.raises(ValueError, match=r"made with a different configuration \(hash \w+ != \w+\); use a new "
                                         r"--out or delete the file") as error:
        run_eval(_options(setup, out, limit=2, config=VCDConfig()), pipeline=LlavaPipeline(*tiny_llava))
    assert "method" in str(error.value)
    with pytest.raises(ValueError, match="different configuration"):
        run_eval(_options(setup, out, limit=2, seed=7), pipeline=LlavaPipeline(*tiny_llava))
    assert len(_lines(out / "answers.jsonl")) == 2


@pytest.mark.parametrize("config", [AVCConfig(), None], ids=["avc", "none"])
def test_batch_of_three_equals_one_at_a_time(setup, tiny_llava, config):
    kwargs = dict(protocol="llava", config=config, limit=None, max_new_tokens=6)
    questions = setup["tmp"] / "mixed.json"  # two images of different sizes, prompts of different lengths
    questions.write_text("\n".join(setup["questions"].read_text().splitlines()[3:9]) + "\n")
    texts = {}
    for batch in (1, 3):
        out = setup["tmp"] / f"batch{batch}"
        run_eval(_options(setup, out, batch_size=batch, question_file=str(questions), **kwargs), pipeline=LlavaPipeline(*tiny_llava))
        texts[batch] = [(r["question_id"], r["text"]) for r in _lines(out / "answers.jsonl")]
    assert len(texts[1]) == 6 and texts[3] == texts[1]
    assert _lines(setup["tmp"] / "batch1" / "answers.jsonl")[0]["prompt"].endswith(
        "\nAnswer the question using a single word or phrase.")


KILLED_AFTER = 5  # of the 12 questions


def test_killed_run_resumes_with_every_question_exactly_once(setup, tiny_llava):
    out, stalled = setup["tmp"] / "killed", setup["tmp"] / "stalled-rank"
    command = [sys.executable, str(Path(__file__).with_name("stall_after.py")), str(KILLED_AFTER), str(stalled), "--",
               "eval", "pope", "--model-path", str(setup["model_path"]), "--image-folder", str(setup["images"]),
               "--question-file", str(setup["questions"]), "--out", str(out), "--method", "none", "--protocol",
               "llava", "--max-new-tokens", "24", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not Path(f"{stalled}0").is_file():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # stopped for good right after its KILLED_AFTER-th answer
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    answers = out / "answers.jsonl"
    assert answers.read_bytes().count(b"\n") == KILLED_AFTER
    options = EvalOptions("pope", str(setup["model_path"]), str(out), str(setup["images"]),
                          str(setup["questions"]), None, "llava", max_new_tokens=24, progress=False)
    summary = run_eval(options, pipeline=LlavaPipeline(*tiny_llava))
    assert summary.skipped == KILLED_AFTER and summary.new == 12 - KILLED_AFTER
    ids = [r["question_id"] for r in _lines(answers)]
    assert sorted(ids) == list(range(1, 13)) and len(ids) == 12


def test_partial_last_line_is_dropped_on_resume(setup, tiny_llava):
    out = setup["tmp"] / "partial"
    run_eval(_options(setup, out, limit=3), pipeline=LlavaPipeline(*tiny_llava))
    with open(out / "answers.jsonl", "ab") as handle:
        handle.write(b'{"question_id": 4, "prompt": "Is there a sandw')  # a write cut by a kill
    run_eval(_options(setup, out), pipeline=LlavaPipeline(*tiny_llava))
    ids = [r["question_id"] for r in _lines(out / "answers.jsonl")]
    assert ids == [1, 2, 3, 4, 5, 6]


def test_missing_image_names_question_and_path_and_keeps_answers(setup, tiny_llava):
    out = setup["tmp"] / "missing"
    run_eval(_options(setup, out), pipeline=LlavaPipeline(*tiny_llava))
    missing = setup["images"] / setup["names"][1]
    missing.unlink()
    with pytest.raises(UserError, match=r"question 7: image .*COCO_val2014_000000210789\.jpg") as error:
        run_eval(_options(setup, out, limit=None), pipeline=LlavaPipeline(*tiny_llava))
    assert str(missing) in str(error.value)
    assert len(_lines(out / "answers.jsonl")) == 6


def test_unreadable_image_midway_keeps_the_answers_before_it(setup, tiny_llava):
    out = setup["tmp"] / "corrupt"
    (setup["images"] / setup["names"][1]).write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"question 7: image .*210789\.jpg' cannot be read"):
        run_eval(_options(setup, out, limit=None), pipeline=LlavaPipeline(*tiny_llava))
    assert [r["question_id"] for r in _lines(out / "answers.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_malformed_question_line_is_reported_with_its_line_number(setup, capsys):
    lines = setup["questions"].read_text().splitlines()
    lines[2] = lines[2][:-5]
    setup["questions"].write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"coco_pope_random\.json, line 3: not valid JSON"):
        get_benchmark("pope").load(str(setup["questions"]))
    lines[2] = json.dumps({"question_id": 3, "text": "Is there a dog?"})
    setup["questions"].write_text("\n".join(lines) + "\n")
    code = eval_main(["eval", "pope", "--model-path", str(setup["model_path"]), "--out", str(setup["tmp"] / "x"),
                      "--image-folder", str(setup["images"]), "--question-file", str(setup["questions"])])
    error = capsys.readouterr().err
    assert code == 2 and "line 3: missing 'image'" in error and error.count("\n") == 1


def test_unknown_benchmark_and_bad_amber_file(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'popee'.*Did you mean 'pope'"):
        get_benchmark("popee")
    broken = tmp_path / "query_all.json"
    broken.write_text('[\n  {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},\n  {"id": 2,\n]\n')
    with pytest.raises(ValueError, match="line 4"):
        get_benchmark("amber").load(str(broken))
    broken.write_text('[\n  {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},\n  {"id": 2}\n]\n')
    with pytest.raises(ValueError, match=r"line 3 \(item 1\): missing 'image', 'query'"):
        get_benchmark("amber").load(str(broken))


def test_chunks_follow_llava_get_chunk_and_merge_in_question_order(setup, tiny_llava):
    from llava.eval.model_vqa_loader import get_chunk as llava_get_chunk

    items = list(range(10))
    for count in (1, 2, 3, 4):
        for index in range(count):
            try:
                expected = llava_get_chunk(items, count, index)
            except IndexError:
                expected = []
            assert ans.get_chunk(items, count, index) == expected
    out = setup["tmp"] / "chunks"
    for index in (2, 0, 3):  # 6 questions in 4 chunks: sizes 2, 2, 2, 0
        run_eval(_options(setup, out, num_chunks=4, chunk_idx=index), pipeline=LlavaPipeline(*tiny_llava))
    with pytest.raises(UserError, match=r"chunk\(s\) \[1\] of 4 missing"):
        merge_chunks(out)
    run_eval(_options(setup, out, num_chunks=4, chunk_idx=1), pipeline=LlavaPipeline(*tiny_llava))
    chunk1 = out / "answers.chunk1of4.jsonl"
    saved = chunk1.read_text()
    chunk1.write_text(saved.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="chunk 1 of 4 is incomplete"):
        merge_chunks(out)
    chunk1.write_text(saved)
    assert eval_main(["merge", "--out", str(out)]) == 0
    assert [r["question_id"] for r in _lines(out / "answers.jsonl")] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="already exists"):
        merge_chunks(out)
    with pytest.raises(ValueError, match=r"holds the shards of a run split 4 ways .* resume with 4 processes"):
        run_eval(_options(setup, out, num_chunks=2, chunk_idx=0), pipeline=LlavaPipeline(*tiny_llava))
    assert run_eval(_options(setup, out), pipeline=LlavaPipeline(*tiny_llava)).new == 0  # one process: merged file
    merged = (out / "answers.jsonl").read_text()
    setup["questions"].rename(setup["tmp"] / "moved.json")  # the recorded file is gone: its packaged copy is used
    assert merge_chunks(out, force=True).read_text() == merged
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "question_file": str(setup["tmp"] / "my_questions.json")}))
    with pytest.raises(UserError, match="my_questions.json .* is gone; restore it"):
        merge_chunks(out, force=True)


def _mme_folder(root: Path, sample_image) -> Path:
    """A small MME_Benchmark_release_version: one flat sub-task and one images/ + questions_answers_YN/."""
    folder = root / "MME_Benchmark_release_version"
    (folder / "existence").mkdir(parents=True)
    sample_image.save(folder / "existence" / "000000006040.jpg")
    (folder / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n")
    (folder / "artwork" / "images").mkdir(parents=True)
    (folder / "artwork" / "questions_answers_YN").mkdir()
    sample_image.resize((200, 300)).save(folder / "artwork" / "images" / "10002.jpg")
    (folder / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork created by Fra Angelico? Please answer yes or no.\tYes\n"
        "Is this artwork created by Henri Matisse? Please answer yes or no.\tNo\n")
    (folder / "count").mkdir()
    sample_image.crop((0, 0, 300, 300)).save(folder / "count" / "0001.png")
    (folder / "count" / "count.txt").write_text(  # the image<TAB>question<TAB>answer layout
        "0001.png\tAre there two people? Please answer yes or no.\tNo\n"
        "0001.png\tIs there one person? Please answer yes or no.\tYes\n")
    return folder


def test_mme_folder_run_and_score(tmp_path, sample_image, tiny_llava_dir, tiny_llava, capsys):
    folder = _mme_folder(tmp_path, sample_image)
    options = EvalOptions("mme", str(tiny_llava_dir), str(tmp_path / "mme"), question_file=str(folder),
                          config=None, protocol="paper", max_new_tokens=TOKENS, progress=False)
    summary = run_eval(options, pipeline=LlavaPipeline(*tiny_llava))
    records = _lines(summary.answers_file)
    assert [r["question_id"] for r in records] == [
        "artwork/10002.jpg", "artwork/10002.jpg#1", "count/0001.png", "count/0001.png#1",
        "existence/000000006040.jpg", "existence/000000006040.jpg#1"]
    assert records[4]["prompt"] == "Is there a train in this image?"  # paper protocol: no "Please answer..."
    assert records[0]["metadata"]["image"] == "artwork/images/10002.jpg"
    assert records[2]["metadata"] == {**records[2]["metadata"], "image": "count/0001.png", "label": "no"}
    assert eval_main(["score", "mme", "--answers-file", str(tmp_path / "mme"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["subtasks"]) == {"artwork", "count", "existence"}
    assert result["hallucination"] == result["subtasks"]["existence"]["score"] + result["subtasks"]["count"]["score"]
    folder_truth = score_mme(records, str(folder), "paper")  # the CLI default: the protocol of the run
    assert folder_truth["subtasks"] == result["subtasks"]


def test_amber_suffix_only_on_yes_no_questions(tmp_path, sample_image, tiny_llava_dir, tiny_llava):
    queries = {item["id"]: item for item in json.loads(AMBER_QUERIES.read_text())}
    chosen = [queries[1], queries[1005]]  # id 1 (generative) and id 1005 (discriminative), both AMBER_1.jpg
    assert [item["image"] for item in chosen] == ["AMBER_1.jpg", "AMBER_1.jpg"]
    (tmp_path / "query.json").write_text(json.dumps(chosen))
    (tmp_path / "image").mkdir()
    sample_image.save(tmp_path / "image" / "AMBER_1.jpg")
    options = EvalOptions("amber", str(tiny_llava_dir), str(tmp_path / "amber"), str(tmp_path / "image"),
                          str(tmp_path / "query.json"), None, "llava", max_new_tokens=TOKENS, progress=False)
    records = _lines(run_eval(options, pipeline=LlavaPipeline(*tiny_llava)).answers_file)
    assert records[0]["prompt"] == "Describe this image."
    assert records[1]["prompt"] == "Is the sky sunny in this image?\nAnswer the question using a single word or phrase."
    assert Image.open(tmp_path / "image" / "AMBER_1.jpg").size == sample_image.size


def test_a_second_writer_and_a_non_llava_checkpoint_are_refused(setup, tmp_path, capsys):
    path = tmp_path / "answers.jsonl"
    with ans.AnswerWriter(path):
        with pytest.raises(ValueError, match="another run is writing"):
            ans.AnswerWriter(path)
    (tmp_path / "llava-not-a-model").mkdir()
    code = eval_main(["eval", "pope", "--model-path", str(tmp_path / "llava-not-a-model"), "--out",
                      str(tmp_path / "out"), "--image-folder", str(setup["images"]), "--question-file",
                      str(setup["questions"]), "--limit", "1", "--device", "cpu"])
    assert code == 2 and "is not a checkpoint folder: it has no config.json" in capsys.readouterr().err


def test_out_of_memory_says_which_batch_size_to_try_and_keeps_answers(setup, tiny_llava):
    """Fault injection on the real model: the 2nd batch's forward raises CUDA's OOM error."""
    out = setup["tmp"] / "oom"
    run_eval(_options(setup, out, limit=2, batch_size=2), pipeline=LlavaPipeline(*tiny_llava))
    language_model = tiny_llava[1].get_model()

    def out_of_memory(module, args, kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = language_model.register_forward_pre_hook(out_of_memory, with_kwargs=True)
    try:
        with pytest.raises(ValueError, match=r"out of GPU memory at batch size 4; try --batch-size 2"):
            run_eval(_options(setup, out, limit=6, batch_size=4), pipeline=LlavaPipeline(*tiny_llava))
    finally:
        handle.remove()
    assert len(_lines(out / "answers.jsonl")) == 2
