"""A benchmark is one registered object: a benchmark defined outside the package (tests/toy_benchmark.py)
is registered and then answered by `llava-avc eval` and scored by `llava-avc score` (in-process, the real
command line and runner, on a tiny checkpoint of whichever backend this profile has)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from llava_avc.eval.benchmarks import (Benchmark, benchmark_names, get_benchmark, register_benchmark,
                                       unregister_benchmark)
from llava_avc.interfaces.cli import main

from toy_benchmark import BENCHMARK, PREFIX

QUESTIONS = [{"id": 1, "image": "a.png", "question": "What colour is the square?", "color": "red"},
             {"id": 2, "image": "b.png", "question": "What colour is the sky?", "color": "blue"},
             {"id": "x3", "image": "a.png", "question": "What colour is the grass?", "color": "green"}]


@pytest.fixture
def registered():
    register_benchmark(BENCHMARK)
    yield BENCHMARK
    unregister_benchmark(BENCHMARK.name)


@pytest.fixture
def checkpoint(request):
    has_llava = importlib.util.find_spec("llava") is not None
    return request.getfixturevalue("tiny_llava_dir" if has_llava else "tiny_hf_dir")


@pytest.fixture
def data(tmp_path, sample_image):
    (tmp_path / "images").mkdir()
    for name in {question["image"] for question in QUESTIONS}:
        sample_image.save(tmp_path / "images" / name)
    question_file = tmp_path / "colors.jsonl"
    question_file.write_text("".join(json.dumps(question) + "\n" for question in QUESTIONS))
    return question_file, tmp_path / "images"


def test_a_registered_benchmark_is_answered_by_eval_and_scored_by_score(registered, checkpoint, data, tmp_path,
                                                                        capsys):
    question_file, images = data
    out = tmp_path / "run"
    argv = ["eval", "colors", "--model-path", str(checkpoint), "--question-file", str(question_file),
            "--image-folder", str(images), "--out", str(out), "--protocol", "paper", "--max-new-tokens", "3",
            "--device", "cpu", "--method", "avc", "--batch-size", "2"]
    assert main(argv) == 0
    capsys.readouterr()
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [answer["question_id"] for answer in answers] == [question["id"] for question in QUESTIONS]
    assert {answer["metadata"]["benchmark"] for answer in answers} == {"colors"}
    assert [answer["metadata"]["label"] for answer in answers] == [question["color"] for question in QUESTIONS]
    # the paper protocol asks the first line only, as the benchmark's first_line_under says
    assert all(PREFIX not in answer["prompt"] for answer in answers)
    assert json.loads((out / "run.json").read_text())["benchmark"] == "colors"

    assert main(["score", "colors", "--answers-file", str(out), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    right = [question["color"] in answer["text"].lower() for question, answer in zip(QUESTIONS, answers)]
    assert scored["overall"] == pytest.approx(100 * sum(right) / len(right))
    for question, hit in zip(QUESTIONS, right):
        assert scored[question["color"]] == pytest.approx(100.0 * hit)

    assert main(["score", "colors", "--answers-file", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("Colors (percent)\noverall: ")
    assert "every one of the 3 questions answered" in table  # checked against the run's own question file


def test_score_of_a_registered_benchmark_reads_its_answers_as_the_benchmark_says(registered, tmp_path, capsys):
    answers = [("red", "Red."), ("red", "it is blue"), ("blue", "blue sky"), ("green", "no idea")]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"question_id": n, "text": text, "metadata": {"label": color,
                                                                                    "benchmark": "colors"}}) + "\n"
                            for n, (color, text) in enumerate(answers)))
    assert main(["score", "colors", "--answers-file", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"overall": 50.0, "blue": 100.0, "green": 0.0, "red": 50.0}
    assert main(["score", "pope", "--answers-file", str(path)]) == 2  # answers of another benchmark
    assert "holds answers made for colors (metadata.benchmark), not pope" in capsys.readouterr().err


def test_the_llava_protocol_keeps_every_line_of_a_registered_benchmark(registered, checkpoint, data, tmp_path):
    question_file, images = data
    out = tmp_path / "run"
    assert main(["eval", "colors", "--model-path", str(checkpoint), "--question-file", str(question_file),
                 "--image-folder", str(images), "--out", str(out), "--protocol", "llava", "--max-new-tokens", "2",
                 "--device", "cpu", "--method", "none", "--limit", "1"]) == 0
    answer = json.loads((out / "answers.jsonl").read_text().splitlines()[0])
    assert answer["prompt"].endswith(f"{QUESTIONS[0]['question']}\n{PREFIX}")  # yes_no=False: no suffix either


def test_an_unregistered_benchmark_is_a_usage_error(tmp_path, capsys):
    assert "colors" not in benchmark_names()
    assert main(["score", "colors", "--answers-file", str(tmp_path)]) == 2
    assert "unknown benchmark 'colors'; choose one of pope, mme, amber" in capsys.readouterr().err


def test_registration_refuses_a_taken_name_and_what_is_not_a_benchmark():
    with pytest.raises(ValueError, match="benchmark 'pope' is already registered"):
        register_benchmark(type("PopeAgain", (Benchmark,), {"name": "pope"})())
    with pytest.raises(TypeError, match="register_benchmark takes a Benchmark instance"):
        register_benchmark("colors")
    assert get_benchmark("POPE").title == "POPE"
