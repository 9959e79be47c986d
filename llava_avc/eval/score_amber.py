"""AMBER scoring after AMBER's ``inference.py`` (docs/evaluation.md), with a documented noun fallback.

Reference files (``--annotation-dir``, AMBER's ``data/`` folder): ``annotations.json`` (ids 1-1004
generative with ``truth`` / ``hallu`` objects; the rest yes/no with ``truth``), ``relation.json``
(object -> its synonyms; its keys and values are AMBER's object vocabulary) and ``safe_words.txt``.

Generative (the official bookkeeping): each object mention that is not a safe word either names
a truth object or one of its synonyms (covers it, first match in AMBER's order: synonyms of
truth[0], truth[1], ..., then the truth words), or it is a hallucination (and, when it names a
``hallu`` object or its synonym, also counts for Cog). CHAIR = hallucinated mentions / mentions,
Cover = covered truth objects / truth objects, Hal = % of captions with a hallucination, Cog =
mentioned hallu objects / hallu objects. All in percent.

NOUN EXTRACTION FALLBACK. The official evaluator tags nouns with NLTK (``word_tokenize``,
``pos_tag``, WordNet lemmatizer) and additionally counts spaCy ``en_core_web_lg`` word-vector
similarity > 0.8 as a match. Neither NLTK data nor spaCy is installed here (and nothing is
downloaded), so: lowercase, split into words (letters and inner hyphens; punctuation dropped),
keep a word when it, or its singular by WordNet's plural rules (-s, -ses, -xes, -zes, -ches,
-shes, -men, -ies and a table of irregular plurals), is in AMBER's vocabulary; no part-of-speech
filter (except the modal "can" and "hot"), no similarity matching. Numbers can therefore differ
from the official evaluator; every result carries this note.

Discriminative: answers mapped to yes/no by the rule; Accuracy, and Precision / Recall / F1 with
"no" as the positive class, overall and per type (existence, attribute = state + number +
action, relation). Exact fractions (the official script adds 0.001 to denominators and rounds
to 0.1). AMBER score = (100 - CHAIR + F1) / 2.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .rules import get_rule

FALLBACK_NOTE = ("nouns found by a fallback (lowercase, punctuation stripped, AMBER vocabulary words and their "
                 "simple plurals, no POS tagging); spaCy en_core_web_lg similarity matching is absent, so "
                 "numbers can differ from the official AMBER evaluator")
_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
              "mice": "mouse", "geese": "goose", "leaves": "leaf", "knives": "knife", "shelves": "shelf",
              "wolves": "wolf", "halves": "half", "loaves": "loaf", "oxen": "ox", "dice": "die"}
_PLURAL_RULES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                 ("men", "man"), ("ies", "y"))
_NOT_NOUNS = frozenset({"can", "hot"})
_TYPE_GROUPS = {"discriminative-hallucination": "existence", "discriminative-attribute-state": "state",
                "discriminative-attribute-number": "number", "discriminative-attribute-action": "action",
                "discriminative-relation": "relation", "relation": "relation"}
_REFERENCE_FILES = ("annotations.json", "relation.json", "safe_words.txt")


@dataclass
class AmberReferences:
    """AMBER's reference data: annotations by id, synonyms, global safe words, object vocabulary."""

    annotations: dict
    association: dict
    safe_words: frozenset
    vocabulary: frozenset


def load_references(annotation_dir) -> AmberReferences:
    """Read annotations.json, relation.json and safe_words.txt from AMBER's data folder."""
    folder = Path(annotation_dir)
    missing = [name for name in _REFERENCE_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"--annotation-dir {str(folder)!r} lacks {', '.join(missing)} (AMBER's data/ folder).")
    annotations = {int(item["id"]): item for item in json.loads((folder / "annotations.json").read_text())}
    association = json.loads((folder / "relation.json").read_text())
    safe = frozenset(line.strip() for line in (folder / "safe_words.txt").read_text().splitlines() if line.strip())
    vocabulary = frozenset(association) | frozenset(w for words in association.values() for w in words)
    return AmberReferences(annotations, association, safe, vocabulary)


def _lemma(word: str, vocabulary: frozenset):
    if word in vocabulary:
        return word
    if _IRREGULAR.get(word) in vocabulary:
        return _IRREGULAR[word]
    for suffix, ending in _PLURAL_RULES:
        if word.endswith(suffix) and word[:len(word) - len(suffix)] + ending in vocabulary:
            return word[:len(word) - len(suffix)] + ending
    return None


def extract_objects(text: str, vocabulary: frozenset) -> list:
    """The AMBER-vocabulary objects a caption mentions, in order, with repeats (the fallback)."""
    objects = []
    for word in re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower()):
        lemma = _lemma(word, vocabulary)
        if lemma is not None and lemma not in _NOT_NOUNS:
            objects.append(lemma)
    return objects


def _first_match(obj: str, words: list, association: dict):
    """Index of the first annotated object `obj` names: synonyms first, then the words (AMBER's order)."""
    for index, word in enumerate(words):
        if obj in association.get(word, ()):
            return index
    for index, word in enumerate(words):
        if obj == word:
            return index
    return None


def generative_item(objects: list, entry: dict, refs: AmberReferences) -> dict:
    """Counts of one caption: mentions, hallucinated mentions, covered truth, mentioned hallu objects."""
    truth, hallu = entry["truth"], entry["hallu"]
    covered, cognition = [False] * len(truth), [False] * len(hallu)
    hallucinated = 0
    for obj in objects:
        if obj in refs.safe_words:
            continue
        index = _first_match(obj, truth, refs.association)
        if index is not None:
            covered[index] = True
            continue
        index = _first_match(obj, hallu, refs.association)
        if index is not None:
            cognition[index] = True
        hallucinated += 1
    return {"mentions": len(objects), "hallucinated": hallucinated, "covered": sum(covered),
            "truth": len(truth), "cog": sum(cognition), "hallu": len(hallu)}


def _pct(numerator: float, denominator: float):
    return 100.0 * numerator / denominator if denominator else None


def _generative(items: list) -> dict:
    totals = {key: sum(item[key] for item in items) for key in items[0]}
    return {"CHAIR": _pct(totals["hallucinated"], totals["mentions"]),
            "Cover": _pct(totals["covered"], totals["truth"]),
            "Hal": _pct(sum(1 for item in items if item["hallucinated"]), len(items)),
            "Cog": _pct(totals["cog"], totals["hallu"]), "captions": len(items), "counts": totals}


def discriminative_metrics(pairs: list) -> dict:
    """pairs: (truth, answer) as "yes"/"no"; "no" is the positive class."""
    answered_no = sum(1 for _, answer in pairs if answer == "no")
    truly_no = sum(1 for truth, _ in pairs if truth == "no")
    both_no = sum(1 for truth, answer in pairs if truth == answer == "no")
    precision, recall = _pct(both_no, answered_no), _pct(both_no, truly_no)
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"Accuracy": _pct(sum(1 for truth, answer in pairs if truth == answer), len(pairs)),
            "Precision": precision, "Recall": recall, "F1": f1, "questions": len(pairs)}


def _discriminative(pairs_by_type: dict) -> dict:
    groups: dict = {"all": []}
    for kind, pairs in pairs_by_type.items():
        group = _TYPE_GROUPS.get(kind, kind)
        groups["all"] += pairs
        groups.setdefault(group, []).extend(pairs)
        if group in ("state", "number", "action"):
            groups.setdefault("attribute", []).extend(pairs)
    result = discriminative_metrics(groups.pop("all"))
    result["by_type"] = {name: discriminative_metrics(pairs) for name, pairs in sorted(groups.items())}
    return result


def _entry(refs: AmberReferences, record: dict) -> dict:
    try:
        return refs.annotations[int(record["question_id"])]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"answer to question {record['question_id']!r} is not an AMBER id in annotations.json.") \
            from None


def score_amber(records: list, refs: AmberReferences, rule: str = "llava") -> dict:
    """Generative and discriminative AMBER metrics and the AMBER score (percent)."""
    normalise = get_rule(rule)
    captions, pairs_by_type = [], {}
    for record in records:
        entry = _entry(refs, record)
        if entry["type"] == "generative":
            captions.append(generative_item(extract_objects(record["text"], refs.vocabulary), entry, refs))
        else:
            pairs_by_type.setdefault(entry["type"], []).append((entry["truth"], normalise(record["text"])))
    generative = _generative(captions) if captions else None
    discriminative = _discriminative(pairs_by_type) if pairs_by_type else None
    score = None
    if generative and discriminative and generative["CHAIR"] is not None:
        score = (100 - generative["CHAIR"] + discriminative["F1"]) / 2
    return {"generative": generative, "discriminative": discriminative, "amber_score": score, "rule": rule,
            "noun_extractor": FALLBACK_NOTE}


def headline(result: dict) -> dict:
    """CHAIR, Cover, Hal, Cog, Accuracy, F1 and the AMBER score, for comparisons."""
    table = {}
    for key in ("CHAIR", "Cover", "Hal", "Cog"):
        if result["generative"] and result["generative"][key] is not None:
            table[key] = result["generative"][key]
    for key in ("Accuracy", "F1"):
        if result["discriminative"] and result["discriminative"][key] is not None:
            table[key] = result["discriminative"][key]
    if result["amber_score"] is not None:
        table["AMBER score"] = result["amber_score"]
    return table


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report(result: dict) -> str:
    """A human-readable summary."""
    lines = [f"AMBER, answer rule: {result['rule']}"]
    gen, dis = result["generative"], result["discriminative"]
    if gen:
        lines.append(f"generative ({gen['captions']} captions): CHAIR {_fmt(gen['CHAIR'])}  Cover {_fmt(gen['Cover'])}"
                     f"  Hal {_fmt(gen['Hal'])}  Cog {_fmt(gen['Cog'])}")
    if dis:
        lines.append(f"discriminative ({dis['questions']} questions): Accuracy {_fmt(dis['Accuracy'])}  Precision "
                     f"{_fmt(dis['Precision'])}  Recall {_fmt(dis['Recall'])}  F1 {_fmt(dis['F1'])}")
        for name, values in dis["by_type"].items():
            lines.append(f"  {name:<10} Acc {_fmt(values['Accuracy'])}  F1 {_fmt(values['F1'])}"
                         f"  (n={values['questions']})")
    lines.append(f"AMBER score: {_fmt(result['amber_score'])}")
    lines.append(f"note: {result['noun_extractor']}")
    return "\n".join(lines)
