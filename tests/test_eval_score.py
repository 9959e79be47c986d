"""`llava-avc score`: POPE against upstream llava/eval/eval_pope.py on excerpts of the real POPE files, MME and
AMBER on hand-computed cases (AMBER on an excerpt of its real annotation file), and the side-by-side comparison
chart. The excerpts are tests/fixtures/benchmarks (see its README.md)."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import runpy
import sys
from pathlib import Path

import pytest

from llava_avc.interfaces.cli import main as eval_main

from llava_avc.eval.rules import llava_rule, mme_answer, paper_rule, parse_pred_ans
from llava_avc.eval.score_amber import extract_objects, fallback_matcher, load_references, score_amber
from llava_avc.eval.score_mme import score_mme
from llava_avc.eval.score_pope import public, score_pope

from helpers import BENCHMARKS

POPE = BENCHMARKS / "pope"
AMBER = BENCHMARKS / "amber"
CATEGORIES = ("adversarial", "popular", "random")
TEXTS = ["Yes, there is.", "No.", "There is not a dog.", "Yes", "no", "NO", "I don't think so.",
         "Yes, no doubt. There is one.", "Not sure.", "Yes. But not really.", "There isn't one", "yes no"]
#: the TEXTS upstream eval_pope reads as "no" (its first sentence, commas dropped, has the word No, no or not);
#: the others it reads as "yes" ("NO", "Not sure.", "I don't think so.", ...)
READ_AS_NO = {"No.", "There is not a dog.", "no", "Yes, no doubt. There is one.", "yes no"}


def _record(qid, text, **metadata) -> dict:
    return {"question_id": qid, "prompt": "", "text": text, "answer_id": "x", "model_id": "m", "metadata": metadata}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def pope_files(tmp_path_factory):
    """LLaVA's layout: annotation dir with the 3 coco_pope excerpts, a question file with `category`
    (ids made unique across categories, as llava_pope_test.jsonl), and seeded random answers aimed at all
    four cells: per category and label a seeded sample of the questions, of a size that differs per label and
    per category, is answered wrongly, the rest rightly, each with a random text of TEXTS that upstream reads
    so (the test checks upstream's TP/FP/TN/FN: all non-zero and different)."""
    root = tmp_path_factory.mktemp("pope")
    annotations = root / "annotations"
    annotations.mkdir()
    questions, answers, generator = [], [], random.Random(0)
    for offset, category in enumerate(CATEGORIES):
        source = POPE / f"coco_pope_{category}.json"
        (annotations / source.name).symlink_to(source)
        items = [json.loads(line) for line in source.read_text().splitlines()]
        wrong = set()
        for label, size in (("yes", 3 + offset), ("no", 6 + 2 * offset)):
            wrong |= set(generator.sample([i for i, item in enumerate(items) if item["label"] == label], size))
        for index, item in enumerate(items):
            says_no = (item["label"] == "no") != (index in wrong)
            qid = offset * 10000 + item["question_id"]
            questions.append({"question_id": qid, "image": item["image"], "text": item["text"], "category": category})
            answers.append(_record(qid, generator.choice([t for t in TEXTS if (t in READ_AS_NO) == says_no])))
    return {"annotations": annotations, "questions": _write_jsonl(root / "llava_pope_test.jsonl", questions),
            "answers": _write_jsonl(root / "answers.jsonl", answers), "records": answers}


def _upstream(pope_files) -> tuple:
    """Run upstream eval_pope.py's __main__ and parse what it prints: ({category: metrics}, {category: counts})."""
    pytest.importorskip("llava.eval.eval_pope", reason="upstream LLaVA (llava-torch) is not installed on this profile")
    argv = ["eval_pope.py", "--annotation-dir", str(pope_files["annotations"]),
            "--question-file", str(pope_files["questions"]), "--result-file", str(pope_files["answers"])]
    buffer, saved = io.StringIO(), sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(buffer):
            runpy.run_module("llava.eval.eval_pope", run_name="__main__")
    finally:
        sys.argv = saved
    results, counts = {}, {}
    for block in buffer.getvalue().split("Category: ")[1:]:
        category = block.split(",")[0]
        values = dict(re.findall(r"^(Accuracy|Precision|Recall|F1 score|Yes ratio): (\S+)$", block, re.M))
        results[category] = {"accuracy": float(values["Accuracy"]), "precision": float(values["Precision"]),
                             "recall": float(values["Recall"]), "f1": float(values["F1 score"]),
                             "yes_ratio": float(values["Yes ratio"])}
        samples = int(re.search(r"# samples: (\d+)$", block, re.M).group(1))
        tp, fp, tn, fn = map(int, re.search(r"^TP\tFP\tTN\tFN\t\n(\d+)\t(\d+)\t(\d+)\t(\d+)$", block, re.M).groups())
        counts[category] = {"n": samples, "TP": tp, "FP": fp, "TN": tn, "FN": fn}
    return results, counts


def test_pope_equals_upstream_eval_pope_on_the_real_files(pope_files, capsys):
    upstream, upstream_counts = _upstream(pope_files)
    assert sorted(upstream) == sorted(CATEGORIES)
    for category, counts in upstream_counts.items():
        # every answer scored against its excerpt (counted here, not taken from our output), and a confusion
        # matrix with 4 different non-zero cells: both labels, and swapped cells or metrics would show
        assert counts["n"] == (POPE / f"coco_pope_{category}.json").read_bytes().count(b"\n"), category
        cells = [counts[cell] for cell in ("TP", "FP", "TN", "FN")]
        assert min(cells) > 0 and len(set(cells)) == 4, (category, counts)
    positional_full = score_pope(pope_files["records"], pope_files["questions"], pope_files["annotations"])
    labelled_full = score_pope(_with_labels(pope_files["records"]), None, None)
    positional, labelled = public(positional_full), public(labelled_full)
    for full in (positional_full, labelled_full):
        assert {category: full[category]["counts"] for category in full} == upstream_counts
    for ours in (positional, labelled):
        assert sorted(ours) == sorted(upstream)
        for category, values in upstream.items():
            for key, value in values.items():  # upstream prints fractions; llava-avc reports percent
                assert ours[category][key] == pytest.approx(100 * value, abs=1e-7), (category, key)
    code = eval_main(["score", "pope", "--answers-file", str(pope_files["answers"]), "--question-file",
                      str(pope_files["questions"]), "--annotation-dir", str(pope_files["annotations"]), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed == {"unit": "percent", **positional}
    assert set(printed["random"]) == {"accuracy", "precision", "recall", "f1", "yes_ratio"}


def _with_labels(records: list) -> list:
    """The same answers with ground truth in metadata (as `llava-avc eval` writes it)."""
    labels = {}
    for offset, category in enumerate(CATEGORIES):
        for line in (POPE / f"coco_pope_{category}.json").read_text().splitlines():
            item = json.loads(line)
            labels[offset * 10000 + item["question_id"]] = (item["label"], category)
    return [_record(r["question_id"], r["text"], label=labels[r["question_id"]][0],
                    category=labels[r["question_id"]][1]) for r in records]


def test_pope_scoring_straight_from_the_original_question_file(tmp_path):
    answers = [_record(1, "Yes, there is a snowboard."), _record(2, "No, there is not."),
               _record(3, "There is no person."), _record(4, "I don't see one.")]
    result = score_pope(answers, str(POPE / "coco_pope_random.json"), None, "llava")
    # labels yes, no, yes, no; llava rule: yes, no, no, yes -> TP 1, TN 1, FN 1, FP 1
    assert result["random"]["counts"] == {"n": 4, "TP": 1, "FP": 1, "TN": 1, "FN": 1}
    paper = score_pope(answers, str(POPE / "coco_pope_random.json"), None, "paper")
    assert paper["random"]["counts"] == {"n": 4, "TP": 1, "FP": 0, "TN": 2, "FN": 1}  # "don't" -> no
    assert paper["random"]["accuracy"] == 0.75 and paper["random"]["precision"] == 1.0


def test_answer_rules():
    assert [llava_rule(t) for t in ("Yes. But not really.", "Yes, no doubt", "I don't think so.", "NO")] == \
        ["yes", "no", "yes", "yes"]
    assert [paper_rule(t) for t in ("Yes. But not really.", "Yes, no doubt", "I don't think so.", "NO",
                                    "Nothing there", "Yes")] == ["no", "no", "no", "no", "yes", "yes"]
    assert [parse_pred_ans(t) for t in ("yes", "no", "yes, it is", "not really", "the answer is yes")] == \
        ["yes", "no", "yes", "no", "other"]
    assert mme_answer("The answer is no.", "llava") == "other" and mme_answer("The answer is no.", "paper") == "no"


def _mme_records() -> list:
    """existence: img A both right, img B one right; count: both images both right; OCR: one 'other'."""
    rows = [("existence", "A", "yes", "Yes"), ("existence", "A", "no", "No, there is not."),
            ("existence", "B", "yes", "Yes"), ("existence", "B", "no", "Yes"),
            ("count", "C", "yes", "yes"), ("count", "C", "no", "no"),
            ("count", "D", "yes", "Yes."), ("count", "D", "no", "No"),
            ("OCR", "E", "yes", "The text says yes"), ("OCR", "E", "no", "No"),
            ("code_reasoning", "F", "no", "no"), ("code_reasoning", "F", "yes", "no")]
    return [_record(f"{c}/{i}.jpg#{n}", text, category=c, image=f"{c}/{i}.jpg", label=label)
            for n, (c, i, label, text) in enumerate(rows)]


def test_mme_scores_hand_computed():
    result = score_mme(_mme_records(), None, "llava")
    subtasks = result["subtasks"]
    assert subtasks["existence"]["score"] == pytest.approx(100 * 3 / 4 + 100 * 1 / 2)  # 125
    assert subtasks["count"]["score"] == pytest.approx(200)
    assert subtasks["OCR"]["score"] == pytest.approx(50) and subtasks["OCR"]["other"] == 1  # acc 1/2, acc+ 0
    assert subtasks["code_reasoning"]["score"] == pytest.approx(50)
    assert result["perception"] == pytest.approx(125 + 200 + 50)
    assert result["cognition"] == pytest.approx(50)
    assert result["hallucination"] == pytest.approx(325)
    assert "position" in result["missing"]
    paper = score_mme(_mme_records(), None, "paper")  # recorder: "The text says yes" -> Yes
    assert paper["subtasks"]["OCR"]["score"] == pytest.approx(200)


def test_mme_ground_truth_from_the_folder_for_llava_style_answers(tmp_path):
    folder = tmp_path / "MME_Benchmark_release_version" / "existence"
    folder.mkdir(parents=True)
    (folder / "1.txt").write_text("Is there a cat? Please answer yes or no.\tYes\n"
                                  "Is there a dog? Please answer yes or no.\tNo\n")
    short = "\nAnswer the question using a single word or phrase."
    answers = [{"question_id": "existence/1.jpg", "prompt": "Is there a cat?" + short, "text": "Yes"},
               {"question_id": "existence/1.jpg", "prompt": "Is there a dog?" + short, "text": "Yes"}]
    result = score_mme(answers, str(folder.parent), "llava")
    assert result["subtasks"]["existence"]["score"] == pytest.approx(50)  # acc 1/2, acc+ 0


@pytest.fixture(scope="module")
def amber_refs():
    return load_references(AMBER)


def test_amber_noun_fallback(amber_refs):
    text = "Two children and a man watch boats; the benches, glasses and cherries. You can see a hot dog."
    # no POS tagging: "watch" (a verb here) counts; the modal "can" and "hot" are skipped
    assert extract_objects(text, amber_refs.vocabulary) == ["child", "man", "watch", "boat", "bench", "glass",
                                                            "cherry", "dog"]


def test_amber_hand_computed_on_the_real_annotations(amber_refs, capsys, tmp_path):
    """On the excerpt of AMBER's annotations.json (ids 1-3 and 1005-1008, entries as in the original)."""
    answers = [
        # id 1: truth sky forest grass person lake mountain road; hallu cloud sun bird dog flower.
        # objects man (synonym of person), lake, sky, dog (hallu), cloud (hallu): 5 mentions, 2 hallucinated,
        # 3 of 7 truth covered, 2 of 5 hallu mentioned.
        _record(1, "A man is standing by the lake under a blue sky, with two dogs and a cloud."),
        # id 2: truth sky man ship ship forest bridge mountain cloud lake building: ship, lake -> 2 of 10 covered.
        _record(2, "A ship sails on the lake."),
        # id 3: truth child grass flower; hallu sky cloud tree house bench: child, grass covered, bench hallucinated.
        _record(3, "Two children play on the grass near a bench."),
        # discriminative (truth yes, no, yes, no): all right
        _record(1005, "Yes, it is."), _record(1006, "No."), _record(1007, "Yes"), _record(1008, "No, it is not."),
    ]
    truths = [amber_refs.annotations[i]["truth"] for i in (1005, 1006, 1007, 1008)]
    assert truths == ["yes", "no", "yes", "no"]
    result = score_amber(answers, amber_refs, "paper", fallback_matcher())
    gen, dis = result["generative"], result["discriminative"]
    assert gen["counts"] == {"mentions": 10, "hallucinated": 3, "covered": 7, "truth": 20, "cog": 3, "hallu": 15}
    assert gen["CHAIR"] == pytest.approx(30.0) and gen["Cover"] == pytest.approx(35.0)
    assert gen["Hal"] == pytest.approx(200 / 3) and gen["Cog"] == pytest.approx(20.0)
    assert dis["Accuracy"] == pytest.approx(100.0) and dis["F1"] == pytest.approx(100.0)
    assert result["amber_score"] == pytest.approx((100 - 30 + 100) / 2)
    assert "spaCy en_core_web_lg similarity matching is absent" in result["noun_extractor"]
    assert result["nouns"] == "fallback"
    wrong = score_amber([_record(1005, "No"), _record(1006, "No"), _record(1007, "No"), _record(1008, "Yes")],
                        amber_refs, "paper", fallback_matcher())["discriminative"]
    # answered no: 1005 (truth yes), 1006 (no), 1007 (yes) -> precision 1/3; truly no: 1006, 1008 -> recall 1/2
    assert wrong["Accuracy"] == pytest.approx(25.0) and wrong["Precision"] == pytest.approx(100 / 3)
    assert wrong["Recall"] == pytest.approx(50.0) and wrong["F1"] == pytest.approx(40.0)
    answers_file = _write_jsonl(tmp_path / "amber.jsonl", answers)
    assert eval_main(["score", "amber", "--answers-file", str(answers_file), "--annotation-dir", str(AMBER),
                      "--amber-nouns", "fallback"]) == 0
    assert "nouns: fallback:" in capsys.readouterr().out


def test_compare_prints_a_table_and_writes_a_chart(tmp_path, capsys):
    runs = []
    for name, text in (("none", "Yes"), ("avc", "No")):
        folder = tmp_path / name
        folder.mkdir()
        rows = [_record(q, text if q % 3 else "Yes", label="yes" if q % 2 else "no", category="random")
                for q in range(1, 31)]
        _write_jsonl(folder / "answers.jsonl", rows)
        (folder / "run.json").write_text(json.dumps({"method": name, "protocol": "llava"}))
        runs.append(str(folder))
    chart = tmp_path / "pope.png"
    assert eval_main(["score", "pope", "--compare", *runs, "--chart", str(chart)]) == 0
    printed = capsys.readouterr().out
    assert "none (none, llava)" in printed and "avc (avc, llava)" in printed and "random accuracy" in printed
    # none answers "Yes" to all 30 questions (15 labelled yes); avc "No" except where q % 3 == 0 (10 answered
    # "Yes", 5 of them labelled yes): accuracies 15/30 and (15 - 5 + 5)/30 = 50.00
    assert re.search(r"^random accuracy\s+50\.00\s+50\.00$", printed, re.M)
    assert re.search(r"^random recall\s+100\.00\s+33\.33$", printed, re.M)
    assert chart.stat().st_size > 0 and chart.read_bytes()[:4] == b"\x89PNG"
