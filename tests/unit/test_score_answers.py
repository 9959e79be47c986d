"""`llava-avc score` on answer files as they come: every anomaly is counted in the summary, is a one-line
error, or (with --strict) fails; and a folder of seed<S>/ runs is reported as mean and sample std.

The answers are written by hand here (no model): each test states the numbers it expects and why.
"""

from __future__ import annotations

import json
import re

import pytest

from llava_avc.eval import answers as ans
from llava_avc.interfaces.cli import main

N = 24


def _questions(tmp_path, n: int = N):
    """A POPE question file of n questions, labels alternating yes / no (odd ids yes)."""
    rows = [{"question_id": i, "image": f"img{(i - 1) // 6}.jpg", "text": f"Is there a thing {i}?",
             "label": "yes" if i % 2 else "no"} for i in range(1, n + 1)]
    path = tmp_path / "coco_pope_random.json"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _answer(qid, text, benchmark="pope", config_hash="abc", **extra) -> dict:
    metadata = {"config_hash": config_hash, "benchmark": benchmark, "method": "avc", "protocol": "llava",
                "label": "yes" if isinstance(qid, int) and qid % 2 else "no", "category": "random", **extra}
    return {"question_id": qid, "prompt": f"Is there a thing {qid}?", "text": text, "answer_id": "a",
            "model_id": "m", "metadata": metadata}


def _right(qid) -> str:
    return "Yes" if qid % 2 else "No"


def _write(path, records, final_newline=True, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(record) for record in records) + ("\n" if final_newline else "") + tail
    path.write_text(text)
    return path


def _score(capsys, *argv):
    code = main(["score", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _n_scored(out: str) -> int:
    return int(re.search(r"^random\s+(\d+)\s", out, re.M).group(1))


# ---- a last line without its newline -----------------------------------------------------------------------

def test_a_complete_last_answer_without_its_newline_is_scored(tmp_path, capsys):
    path = _write(tmp_path / "a.jsonl", [_answer(q, _right(q)) for q in range(1, N + 1)], final_newline=False)
    assert len(ans.load_answer_file(path).records) == N
    code, out, _ = _score(capsys, "pope", "--answers-file", str(path))
    assert code == 0 and _n_scored(out) == N and f"answers: {N} scored" in out
    one = _write(tmp_path / "one.jsonl", [_answer(1, "Yes")], final_newline=False)
    code, out, err = _score(capsys, "pope", "--answers-file", str(one))
    assert code == 0 and _n_scored(out) == 1, err


def test_only_a_last_line_that_is_not_json_is_partial(tmp_path, capsys):
    path = _write(tmp_path / "a.jsonl", [_answer(q, _right(q)) for q in range(1, N)], tail='{"question_id": 24, "te')
    answers = ans.load_answer_file(path)
    assert len(answers.records) == N - 1 and answers.partial_line
    code, out, _ = _score(capsys, "pope", "--answers-file", str(path))
    assert code == 0 and _n_scored(out) == N - 1 and "a partial last line" in out
    code, _, err = _score(capsys, "pope", "--answers-file", str(path), "--strict")
    assert code == 2 and "partial last line" in err and err.count("\n") == 1


def test_resume_completes_a_last_answer_without_newline_and_drops_only_a_partial_one(tmp_path):
    path = _write(tmp_path / "answers.jsonl", [_answer(1, "Yes"), _answer(2, "No")], final_newline=False)
    before = path.read_bytes()
    assert ans.drop_partial_line(path) is False
    assert path.read_bytes() == before + b"\n"  # kept, and the next append starts a new line
    with ans.AnswerWriter(path) as writer:
        writer.write(_answer(3, "Yes"))
    assert [r["question_id"] for r in ans.read_answers(path)] == [1, 2, 3]
    with open(path, "ab") as handle:
        handle.write(b'{"question_id": 4, "text": "Ye')
    assert ans.drop_partial_line(path) is True
    assert path.read_bytes() == before + b"\n" + (json.dumps(_answer(3, "Yes")) + "\n").encode()


# ---- duplicates -------------------------------------------------------------------------------------------

def test_duplicate_answers_are_scored_once_and_counted(tmp_path, capsys):
    records = [_answer(q, _right(q)) for q in range(1, N + 1)]
    # three repeats, each with the WRONG answer: if they were scored, accuracy would drop below 1
    repeats = [_answer(q, "No" if q % 2 else "Yes") for q in (2, 5, 9)]
    path = _write(tmp_path / "a.jsonl", records[:10] + repeats + records[10:])
    code, out, _ = _score(capsys, "pope", "--answers-file", str(path), "--json")
    assert code == 0 and json.loads(out)["random"]["accuracy"] == 100.0  # percent, as every table
    code, out, _ = _score(capsys, "pope", "--answers-file", str(path))
    assert _n_scored(out) == N
    assert "3 duplicate answer(s) left out" in out and "question 2, line 11" in out
    code, _, err = _score(capsys, "pope", "--answers-file", str(path), "--strict")
    assert code == 2 and "3 duplicate answer(s)" in err


def test_llava_mme_answers_sharing_an_id_with_different_prompts_are_not_duplicates(tmp_path):
    rows = [{"question_id": "existence/1.jpg", "prompt": "Is there a cat?", "text": "Yes"},
            {"question_id": "existence/1.jpg", "prompt": "Is there a dog?", "text": "No"}]
    answers = ans.load_answer_file(_write(tmp_path / "mme.jsonl", rows))
    assert answers.duplicates == [] and len(answers.records) == 2


# ---- missing answers --------------------------------------------------------------------------------------

def test_missing_answers_are_reported_against_the_question_file(tmp_path, capsys):
    questions = _questions(tmp_path)
    answered = [q for q in range(1, N + 1) if q not in (5, 6, 17)]
    path = _write(tmp_path / "a.jsonl", [_answer(q, _right(q)) for q in answered])
    code, out, _ = _score(capsys, "pope", "--answers-file", str(path), "--question-file", str(questions))
    assert code == 0 and f"answers: {N - 3} scored; 3 of {N} questions have no answer (first: 5)" in out
    code, out, _ = _score(capsys, "pope", "--answers-file", str(path))
    assert "missing answers not checked (no question file known: pass --question-file)" in out
    code, _, err = _score(capsys, "pope", "--answers-file", str(path), "--strict")
    assert code == 2 and "missing answers cannot be checked" in err
    code, _, err = _score(capsys, "pope", "--answers-file", str(path), "--question-file", str(questions), "--strict")
    assert code == 2 and "3 of 24 questions have no answer" in err


def test_the_runs_own_question_file_and_limit_are_used_from_run_json(tmp_path, capsys):
    questions = _questions(tmp_path)
    run = tmp_path / "run"
    _write(run / "answers.jsonl", [_answer(q, _right(q)) for q in range(1, 11)])
    (run / "run.json").write_text(json.dumps({"benchmark": "pope", "method": "avc", "protocol": "llava",
                                              "question_file": str(questions), "limit": 12}))
    code, out, _ = _score(capsys, "pope", "--answers-file", str(run))
    assert code == 0 and "2 of 12 questions have no answer (first: 11)" in out  # the run asked 12 of 24
    (run / "run.json").write_text(json.dumps({"benchmark": "pope", "question_file": str(questions), "limit": 10}))
    code, out, _ = _score(capsys, "pope", "--answers-file", str(run), "--strict")
    assert code == 0 and "every one of the 10 questions answered" in out


# ---- answers of another benchmark -------------------------------------------------------------------------

def test_pope_answers_scored_as_mme_or_amber_are_refused_in_one_line(tmp_path, capsys):
    path = _write(tmp_path / "a.jsonl", [_answer(q, _right(q)) for q in range(1, N + 1)])
    for other in ("mme", "amber"):
        code, out, err = _score(capsys, other, "--answers-file", str(path))
        assert code == 2 and out == "" and err.count("\n") == 1
        assert f"answers made for pope (metadata.benchmark), not {other}" in err
        assert "llava-avc score pope" in err


def test_run_json_names_the_benchmark_when_the_answers_carry_no_metadata(tmp_path, capsys):
    run = tmp_path / "run"
    _write(run / "answers.jsonl", [{"question_id": 1, "prompt": "p", "text": "Yes"}])
    (run / "run.json").write_text(json.dumps({"benchmark": "amber"}))
    code, _, err = _score(capsys, "pope", "--answers-file", str(run))
    assert code == 2 and "made for amber" in err


# ---- unreadable answers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("broken, reason", [
    ({"text": None}, "its text is null, not a string"),
    ({"text": 3}, "its text is int, not a string"),
    ({"text": ["Yes"]}, "its text is list, not a string"),
    ({"text": "drop"}, "an answer needs a text"),
    ({"question_id": "drop"}, "an answer needs a question_id"),
])
def test_an_unreadable_answer_is_counted_not_a_traceback(tmp_path, capsys, broken, reason):
    records = [_answer(q, _right(q)) for q in range(1, N + 1)]
    bad = dict(records[6], **broken)
    for key in [key for key, value in broken.items() if value == "drop"]:
        del bad[key]
    records[6] = bad
    path = _write(tmp_path / "a.jsonl", records)
    code, out, err = _score(capsys, "pope", "--answers-file", str(path))
    assert code == 0, err
    assert _n_scored(out) == N - 1 and f"1 unreadable answer(s) left out (first: line 7, {reason})" in out
    code, _, err = _score(capsys, "pope", "--answers-file", str(path), "--strict")
    assert code == 2 and "unreadable" in err and err.count("\n") == 1


def test_a_line_that_is_not_json_an_object_or_json_at_all(tmp_path, capsys):
    records = [json.dumps(_answer(q, _right(q))) for q in range(1, 5)]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(records[:2] + ["[1, 2]"] + records[2:]) + "\n")
    code, out, _ = _score(capsys, "pope", "--answers-file", str(path))
    assert code == 0 and "(first: line 3, a JSON list, not an answer object)" in out
    path.write_text("\n".join(records[:2] + ['{"question_id": 9,'] + records[2:]) + "\n")
    code, _, err = _score(capsys, "pope", "--answers-file", str(path))
    assert code == 2 and "line 3: not a JSON answer" in err and err.count("\n") == 1


def test_answers_of_several_configurations_in_one_file_are_counted(tmp_path, capsys):
    records = [_answer(q, _right(q), config_hash="aaa" if q <= 12 else "bbb") for q in range(1, N + 1)]
    path = _write(tmp_path / "a.jsonl", records)
    code, out, _ = _score(capsys, "pope", "--answers-file", str(path))
    assert code == 0 and "answers of 2 configurations mixed in one file (config_hash aaa, bbb)" in out
    assert _score(capsys, "pope", "--answers-file", str(path), "--strict")[0] == 2


def test_positional_matching_refuses_a_category_with_missing_answers(tmp_path, capsys):
    questions = _questions(tmp_path)
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "coco_pope_random.json").write_text(questions.read_text())
    path = _write(tmp_path / "a.jsonl", [_answer(q, _right(q)) for q in range(1, N)])
    code, _, err = _score(capsys, "pope", "--answers-file", str(path), "--question-file", str(questions),
                          "--annotation-dir", str(annotations))
    assert code == 2 and f"{N - 1} random answers for {N} labels" in err


# ---- a folder of seeds --------------------------------------------------------------------------------------

def _seed_run(folder, seed: int, wrong: set, method="avc", protocol="llava", **settings):
    """Answers to questions 1..4 (labels yes, no, yes, no), wrong where listed; run.json as a run writes it."""
    _write(folder / "answers.jsonl", [_answer(q, ("No" if q % 2 else "Yes") if q in wrong else _right(q))
                                      for q in range(1, 5)])
    run = {"benchmark": "pope", "method": method, "protocol": protocol, "seed": seed,
           "settings": {"seed": seed, "method": method, "protocol": protocol, **settings}}
    (folder / "run.json").write_text(json.dumps(run))


def test_a_folder_of_seeds_is_reported_as_mean_and_sample_std(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    # accuracies 3/4, 2/4, 4/4 -> mean 75, sample std sqrt(((0)^2 + 25^2 + 25^2) / 2) = 25
    for seed, wrong in ((42, {1}), (43, {1, 2}), (44, set())):
        _seed_run(out_dir / f"seed{seed}", seed, wrong)
    code, out, err = _score(capsys, "pope", "--answers-file", str(out_dir), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["metrics"]["random accuracy"] == pytest.approx({"mean": 75.0, "std": 25.0, "n": 3})
    # recall (positive class yes; questions 1 and 3): seeds 42 and 43 miss question 1 -> 50, 50, 100
    assert data["metrics"]["random recall"]["mean"] == pytest.approx(200 / 3)
    assert data["metrics"]["random recall"]["std"] == pytest.approx((((50 - 200 / 3) ** 2 * 2 + (100 - 200 / 3) ** 2)
                                                                      / 2) ** 0.5)
    assert sorted(data["runs"]) == ["seed42", "seed43", "seed44"]
    assert data["runs"]["seed43"]["random"]["accuracy"] == 50.0  # one unit: percent in every run and the mean
    assert data["unit"] == "percent"
    code, out, _ = _score(capsys, "pope", "--answers-file", str(out_dir))
    assert "POPE (percent), 3 seeds (mean ± sample std)" in out
    assert re.search(r"^random accuracy\s+75\.00\s+50\.00\s+100\.00\s+75\.00 ± 25\.00$", out, re.M)
    assert out.count("answers: 4 scored") == 3


def test_seed_folders_are_ordered_by_seed_number_and_compared_with_their_spread(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    for seed, wrong in ((7, {1}), (10, set())):
        _seed_run(out_dir / f"seed{seed}", seed, wrong)
    single = tmp_path / "single"
    _seed_run(single, 42, {1, 2})
    code, out, _ = _score(capsys, "pope", "--compare", str(single), str(out_dir))
    # seed7 75, seed10 100: mean 87.5, std sqrt(2 * 12.5^2) = 17.68
    assert code == 0 and re.search(r"^random accuracy\s+50\.00\s+87\.50 ± 17\.68$", out, re.M)
    assert "runs (avc, llava, 2 seeds)" in out
    code, out, _ = _score(capsys, "pope", "--answers-file", str(out_dir))
    assert out.index("seed7") < out.index("seed10")


def test_seeds_of_different_settings_or_an_ambiguous_folder_are_refused(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    _seed_run(out_dir / "seed1", 1, set())
    _seed_run(out_dir / "seed2", 2, set(), alpha=3.0)
    code, _, err = _score(capsys, "pope", "--answers-file", str(out_dir))
    assert code == 2 and "seed1 and seed2 were made with different settings (alpha)" in err
    _seed_run(out_dir / "seed2", 2, set())
    _write(out_dir / "answers.jsonl", [_answer(1, "Yes")])
    code, _, err = _score(capsys, "pope", "--answers-file", str(out_dir))
    assert code == 2 and "holds both answers.jsonl and seed folders" in err
    (out_dir / "answers.jsonl").unlink()
    (out_dir / "seed3").mkdir()
    code, _, err = _score(capsys, "pope", "--answers-file", str(out_dir))
    assert code == 2 and "seed3" in err and err.count("\n") == 1
