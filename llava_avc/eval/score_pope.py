"""POPE scoring, exactly as upstream ``llava/eval/eval_pope.py`` (plus the paper's answer rule).

Two ways to find the ground truth:

- ``--annotation-dir D`` (upstream's way): the files ``coco_pope_<category>.json`` in D, matched to
  the answers of that category BY POSITION (the answers file must follow the annotation file's
  order, as LLaVA's scripts produce it; a category with more or fewer answers than labels is an
  error, where upstream's ``zip`` pairs them silently); the category of each answer comes from the
  question file's ``category`` field (or, for the POPE authors' files, from the file name).
- otherwise: the ``label`` of each question, matched BY question_id, from ``--question-file``
  (a path, or a packaged set by name such as ``coco_pope_random``) or, when that is not given, from
  the answers' own ``metadata`` (written by ``llava-avc eval``).

Metrics per category: accuracy, precision, recall, f1 (positive class "yes") and yes_ratio, computed
as upstream's fractions and REPORTED IN PERCENT (tables and JSON), the unit of the papers and of every
other llava-avc score table. Upstream divides by zero when there is no positive prediction; here such
a ratio is 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .inputs import parse_json
from .rules import get_rule

METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
#: What every reported number of this benchmark is (tables, JSON, comparisons).
UNIT = "percent"


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def pope_metrics(preds: list, labels: list) -> dict:
    """Upstream eval_pope's arithmetic on 1 (yes) / 0 (no) lists, paired like its `zip`."""
    pairs = list(zip(preds, labels))
    tp = sum(1 for p, y in pairs if p == 1 and y == 1)
    fp = sum(1 for p, y in pairs if p == 1 and y == 0)
    tn = sum(1 for p, y in pairs if p == 0 and y == 0)
    fn = sum(1 for p, y in pairs if p == 0 and y == 1)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(preds.count(1), len(preds)),
        "counts": {"n": len(preds), "TP": tp, "FP": fp, "TN": tn, "FN": fn},
    }


def _predictions(records: list, rule: str) -> list:
    normalise = get_rule(rule)
    return [0 if normalise(record["text"]) == "no" else 1 for record in records]


def _label_value(label: str) -> int:
    return 0 if label == "no" else 1  # upstream: anything but "no" counts as yes


def by_annotation_dir(records: list, questions: dict, annotation_dir, rule: str) -> dict:
    """Upstream's __main__: per coco_pope_<category>.json in the folder, positional matching."""
    results = {}
    for name in sorted(os.listdir(annotation_dir)):
        if not (name.startswith("coco_pope_") and name.endswith(".json")):
            continue  # upstream asserts; other POPE files (aokvqa_, gqa_) are skipped here
        category = name[10:-5]
        current = [r for r in records if _question(questions, r).category == category]
        if not current:
            continue
        with open(Path(annotation_dir) / name, encoding="utf-8") as handle:
            labels = [_label_value(parse_json(line, f"{Path(annotation_dir) / name}, line {number}",
                                              "use the POPE authors' annotation file")["label"])
                      for number, line in enumerate(handle, start=1) if line.strip()]
        if len(current) != len(labels):  # upstream's zip would pair the rest silently
            raise UserError(f"{name}: {len(current)} {category} answers for {len(labels)} labels; matching by "
                            "position needs one answer per label in the file's order: score by label instead "
                            "(leave out --annotation-dir).")
        results[category] = pope_metrics(_predictions(current, rule), labels)
    if not results:
        raise UserError(f"no coco_pope_<category>.json in {annotation_dir} matches the answers' categories.")
    return results


def _question(questions: dict, record: dict):
    try:
        return questions[record["question_id"]]
    except KeyError:
        raise UserError(f"answer to question {record['question_id']!r} has no question in the question "
                        "file; is it the file the answers were made from?") from None


def _truth(record: dict, questions: Optional[dict]) -> tuple:
    if questions is not None:
        question = _question(questions, record)
        return question.label, question.category
    metadata = record.get("metadata") or {}
    return metadata.get("label"), metadata.get("category")


def by_labels(records: list, questions: Optional[dict], rule: str) -> dict:
    """Ground truth per question_id (question file labels, or the answers' metadata)."""
    groups: dict = {}
    for record in records:
        label, category = _truth(record, questions)
        if label is None:
            raise UserError(f"no ground truth for question {record['question_id']!r}: pass --question-file "
                            "(with labels) or --annotation-dir.")
        groups.setdefault(category or "all", []).append((record, _label_value(label)))
    return {category: pope_metrics(_predictions([r for r, _ in pairs], rule), [y for _, y in pairs])
            for category, pairs in groups.items()}


def score_pope(records: list, question_file=None, annotation_dir=None, rule: str = "llava") -> dict:
    """{category: metrics} for POPE answers (see the module docstring for the matching rules)."""
    from .questions import load_pope

    get_rule(rule)
    questions = {q.qid: q for q in load_pope(question_file)} if question_file else None
    if annotation_dir:
        if questions is None:
            raise UserError("--annotation-dir needs --question-file (its `category` field sorts the answers).")
        return by_annotation_dir(records, questions, annotation_dir, rule)
    return by_labels(records, questions, rule)


def public(results: dict) -> dict:
    """{category: {accuracy, precision, recall, f1, yes_ratio} in percent} (the --json output)."""
    return {category: {key: 100 * values[key] for key in METRICS} for category, values in results.items()}


def headline(results: dict) -> dict:
    """Accuracy, precision, recall and F1 per category, for comparisons (percent)."""
    table = {}
    for category, values in results.items():
        for key in ("accuracy", "precision", "recall", "f1"):
            table[f"{category} {key}"] = 100 * values[key]
    return table


def report(results: dict, rule: str) -> str:
    """A human-readable table."""
    lines = [f"POPE ({UNIT}), answer rule: {rule}",
             f"{'category':<14}{'n':>6}{'accuracy':>10}{'precision':>11}{'recall':>9}{'f1':>9}{'yes_ratio':>11}"]
    for category, v in public(results).items():
        lines.append(f"{category:<14}{results[category]['counts']['n']:>6}{v['accuracy']:>10.2f}{v['precision']:>11.2f}"
                     f"{v['recall']:>9.2f}{v['f1']:>9.2f}{v['yes_ratio']:>11.2f}")
    return "\n".join(lines)

