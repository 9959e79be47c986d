"""How a free-text answer becomes yes / no: upstream LLaVA's rule, the paper's `recorder`, MME's parser.

``llava`` (upstream ``llava/eval/eval_pope.py``, verbatim logic): keep the text before the first
``.``, delete ``,``, split on single spaces; the answer is "no" when one of the words is exactly
``No``, ``not`` or ``no``, otherwise "yes".

``paper`` (the AvisC scripts' ``recorder``; docs/evaluation.md): delete ``.`` and ``,`` in the WHOLE
answer, split on single spaces; "no" when a word is ``No``, ``not``, ``no`` or ``NO`` or ends with
``n't``, otherwise "yes".

MME's ``calculation.py`` ``parse_pred_ans`` then reads the lower-cased answer:
exactly "yes"/"no", else "yes"/"no" found in its first 4 characters, else "other".
"""

from __future__ import annotations

import difflib

from ..errors import UserError

_RECORDER_NEGATIONS = ("No", "not", "no", "NO")


def llava_rule(text: str) -> str:
    """Upstream eval_pope.py's normalisation: "yes" or "no"."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def paper_rule(text: str) -> str:
    """The AvisC `recorder`: "yes" or "no"."""
    words = text.replace(".", "").replace(",", "").split(" ")
    if any(word in _RECORDER_NEGATIONS for word in words) or any(word.endswith("n't") for word in words):
        return "no"
    return "yes"


RULES = {"llava": llava_rule, "paper": paper_rule}


def get_rule(name: str):
    """The yes/no rule called `name` (llava or paper)."""
    if name in RULES:
        return RULES[name]
    close = difflib.get_close_matches(name, RULES, n=1, cutoff=0.3)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown answer rule {name!r}; choose llava or paper.{hint}")


def parse_pred_ans(pred_ans: str) -> str:
    """MME calculation.py's parser of a (lower-cased) answer: "yes", "no" or "other"."""
    if pred_ans in ("yes", "no"):
        return pred_ans
    prefix = pred_ans[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_answer(text: str, rule: str) -> str:
    """An MME answer under `rule`: llava = calculation.py on the raw answer; paper = recorder first."""
    if rule == "paper":
        return parse_pred_ans(paper_rule(text))
    get_rule(rule)
    return parse_pred_ans(text.lower())


def default_rule(records: list) -> str:
    """The rule of the protocol the answers were made with (metadata.protocol), else llava."""
    for record in records:
        metadata = record.get("metadata") or {}
        if metadata.get("protocol") in RULES:
            return metadata["protocol"]
    return "llava"
