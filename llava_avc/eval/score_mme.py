"""MME scoring as MME's ``eval_tool/calculation.py`` computes it (docs/evaluation.md).

Per sub-task: ``score = acc + acc+`` in points (at most 200), acc = percent of questions right (an
"other" answer is wrong), acc+ = percent of images whose questions (two per image in MME) are ALL
right; acc and acc+ are reported in percent (tables and JSON), the totals in MME points. Perception = the 10 perception sub-tasks, Cognition = the 4 cognition sub-tasks,
Hallucination (the paper's MME-Hallucination) = existence + count + position + color, at most 800.
Sub-tasks absent from the answers are listed under ``missing`` and count 0.

Answer reading: ``llava`` rule = calculation.py's ``parse_pred_ans`` on the lower-cased answer;
``paper`` rule = the AvisC ``recorder`` first (Yes/No), then ``parse_pred_ans``.
Ground truth: the answers' metadata (written by ``llava-avc eval mme``) or ``--question-file``
(the MME folder), matched by (category, image, question) as LLaVA's ``convert_answer_to_mme.py``
does (LLaVA's llava_mme.jsonl gives both questions of an image the same id), else by question id.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .protocols import SHORT_ANSWER_SUFFIX
from .questions import MME_COGNITION, MME_PERCEPTION, MME_YES_NO_SUFFIX
from .rules import mme_answer

MME_HALLUCINATION = ("existence", "count", "position", "color")
#: What the reported numbers are (tables, JSON, comparisons).
UNIT = "MME points: a sub-task's score is acc + acc+ (at most 200); acc and acc+ in percent"


def _normalised_question(text: str) -> str:
    text = text.split("\n")[0].replace(SHORT_ANSWER_SUFFIX, "").replace(MME_YES_NO_SUFFIX, "")
    return re.sub(r"\s+", " ", text).strip()


def _image_key(question_id: str, image: str) -> str:
    return Path(str(image or question_id).split("#")[0]).stem


def _truth_index(question_folder) -> tuple:
    from .questions import load_mme

    return _index(load_mme(question_folder))


def _index(questions: list) -> tuple:
    by_id = {q.qid: q for q in questions}
    by_text = {(q.category, _image_key(q.qid, q.image), _normalised_question(q.text)): q for q in questions}
    return by_id, by_text


def _question(record: dict, index: tuple):
    """The MME question an answer answers: by (category, image, question text), else by id; or None."""
    metadata = record.get("metadata") or {}
    qid = str(record["question_id"])
    by_id, by_text = index
    category = metadata.get("category") or qid.split("/")[0]
    key = (category, _image_key(qid, None), _normalised_question(record.get("prompt") or ""))
    return by_text.get(key) or by_id.get(record["question_id"])


def _truth(record: dict, index: Optional[tuple]) -> tuple:
    """(category, image key, label) of one answer."""
    metadata = record.get("metadata") or {}
    if index is None:
        qid = str(record["question_id"])
        return metadata.get("category"), _image_key(qid, metadata.get("image")), metadata.get("label")
    question = _question(record, index)
    if question is None:
        return None, None, None
    return question.category, _image_key(question.qid, question.image), question.label


def answered_questions(records: list, questions: list) -> set:
    """The ids of the MME `questions` that `records` answer, matched as scoring matches them."""
    index = _index(questions)
    return {question.qid for question in (_question(record, index) for record in records) if question is not None}


def _subtask(items: list) -> dict:
    """items: (image key, label, prediction) of one sub-task -> acc, acc+, score."""
    images: dict = {}
    for image, label, prediction in items:
        images.setdefault(image, []).append(label == prediction)
    acc = 100 * sum(1 for _, label, prediction in items if label == prediction) / len(items)  # percent
    acc_plus = 100 * sum(all(flags) for flags in images.values()) / len(images)  # percent
    return {"score": acc + acc_plus, "acc": acc, "acc_plus": acc_plus, "questions": len(items),
            "images": len(images), "other": sum(1 for *_, p in items if p == "other")}


def _group(records: list, question_folder, rule: str) -> dict:
    index = _truth_index(question_folder) if question_folder else None
    known = MME_PERCEPTION + MME_COGNITION
    groups: dict = {}
    for record in records:
        category, image, label = _truth(record, index)
        if index is None and category not in known:
            raise UserError(f"the answer to question {record['question_id']!r} belongs to no MME sub-task (category "
                            f"{category!r}; MME's are {', '.join(known)}): these are not MME answers; score them "
                            "with the benchmark they were made for.")
        if label is None or category is None:
            raise UserError(f"no MME ground truth for question {record['question_id']!r}; pass --question-file "
                            "with the MME_Benchmark_release_version folder.")
        groups.setdefault(category, []).append((image, label.lower(), mme_answer(record["text"], rule)))
    return groups


def _total(subtasks: dict, names: tuple) -> float:
    return sum(subtasks[name]["score"] for name in names if name in subtasks)


def score_mme(records: list, question_folder=None, rule: str = "llava") -> dict:
    """Sub-task scores and the Perception / Cognition / Hallucination totals."""
    subtasks = {category: _subtask(items) for category, items in sorted(_group(records, question_folder, rule).items())}
    known = MME_PERCEPTION + MME_COGNITION
    return {
        "subtasks": subtasks,
        "perception": _total(subtasks, MME_PERCEPTION),
        "cognition": _total(subtasks, MME_COGNITION),
        "hallucination": _total(subtasks, MME_HALLUCINATION),
        "missing": [name for name in known if name not in subtasks],
        "rule": rule,
        "unit": UNIT,
    }


def headline(result: dict) -> dict:
    """Totals and the hallucination sub-tasks, for comparisons."""
    table = {"perception": result["perception"], "cognition": result["cognition"],
             "hallucination": result["hallucination"]}
    for name in MME_HALLUCINATION:
        if name in result["subtasks"]:
            table[name] = result["subtasks"][name]["score"]
    return table


def report(result: dict) -> str:
    """A human-readable table."""
    lines = [f"MME ({UNIT}), answer rule: {result['rule']}",
             f"{'sub-task':<24}{'score':>8}{'acc':>8}{'acc+':>8}{'n':>6}"]
    for name, v in result["subtasks"].items():
        lines.append(f"{name:<24}{v['score']:>8.2f}{v['acc']:>8.2f}{v['acc_plus']:>8.2f}{v['questions']:>6}")
    lines += [f"Perception total:    {result['perception']:.2f} / 2000",
              f"Cognition total:     {result['cognition']:.2f} / 800",
              f"Hallucination total: {result['hallucination']:.2f} / 800 (existence, count, position, color)"]
    if result["missing"]:
        lines.append(f"missing sub-tasks (count 0): {', '.join(result['missing'])}")
    return "\n".join(lines)
