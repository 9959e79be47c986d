"""AMBER scoring after AMBER's ``inference.py`` (docs/evaluation.md), with a documented noun fallback.

Reference files (AMBER's ``data/`` folder; a copy ships inside the package, ``--annotation-dir``
reads another): ``annotations.json`` (ids 1-1004 generative with ``truth`` / ``hallu`` objects; the
rest yes/no with ``truth``), ``relation.json`` (object -> its synonyms; its keys and values are
AMBER's object vocabulary) and ``safe_words.txt``.

Generative (the official bookkeeping): each object mention that is not a safe word either names
a truth object or one of its synonyms (covers it, first match in AMBER's order: synonyms of
truth[0], truth[1], ..., then the truth words), or it is a hallucination (and, when it names a
``hallu`` object or its synonym, also counts for Cog). CHAIR = hallucinated mentions / mentions,
Cover = covered truth objects / truth objects, Hal = % of captions with a hallucination, Cog =
mentioned hallu objects / hallu objects. All in percent.

OFFICIAL MATCHING (``official``): where spaCy with ``en_core_web_lg`` and NLTK with its data
(punkt, the averaged perceptron tagger, WordNet) are installed, nouns are found as the official
evaluator finds them (``word_tokenize``, ``pos_tag`` tags ``NN*``, WordNet lemmas, kept when in
AMBER's vocabulary) and, after the exact matches, a mention also matches an annotated object whose
spaCy similarity to it is > 0.8 (the official order: hallu objects for Cog, then truth objects).

NOUN EXTRACTION FALLBACK (``fallback``, used otherwise; nothing is downloaded): lowercase, split
into words (letters and inner hyphens; punctuation dropped), keep a word when it, or its singular
by WordNet's plural rules (-s, -ses, -xes, -zes, -ches, -shes, -men, -ies and a table of irregular
plurals), is in AMBER's vocabulary; no part-of-speech filter (except the modal "can" and "hot"),
no similarity matching. Numbers can therefore differ from the official evaluator. Every result
says which of the two was used (``nouns`` and ``noun_extractor``).

Discriminative: answers mapped to yes/no by the rule; Accuracy, and Precision / Recall / F1 with
"no" as the positive class, overall and per type (existence, attribute = state + number +
action, relation). Exact fractions (the official script adds 0.001 to denominators and rounds
to 0.1). AMBER score = (100 - CHAIR + F1) / 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from .inputs import read_json_file
from .questions import DATA_DIR, read_text
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
OFFICIAL_NOTE = ("nouns found as the official AMBER evaluator finds them (NLTK word_tokenize + pos_tag NN*, WordNet "
                 "lemmas) with spaCy en_core_web_lg similarity > 0.8 matching")
SIMILARITY_THRESHOLD = 0.8  # the official evaluator's --similarity_score default
_OFFICIAL_INSTALL = ("pip install spacy nltk && python -m spacy download en_core_web_lg && python -m nltk.downloader "
                     "punkt punkt_tab averaged_perceptron_tagger averaged_perceptron_tagger_eng wordnet")
NOUN_MODES = ("auto", "official", "fallback")
#: What every reported number is (tables, JSON, comparisons).
UNIT = "percent"


@dataclass
class AmberReferences:
    """AMBER's reference data: annotations by id, synonyms, global safe words, object vocabulary."""

    annotations: dict
    association: dict
    safe_words: frozenset
    vocabulary: frozenset


def _reference_file(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_references(annotation_dir=None) -> AmberReferences:
    """Read annotations.json, relation.json and safe_words.txt from AMBER's data folder (None: the copy
    shipped inside the package; .gz copies are read too)."""
    folder = Path(annotation_dir) if annotation_dir else DATA_DIR / "amber"
    files = {name: _reference_file(folder, name) for name in _REFERENCE_FILES}
    missing = [name for name, path in files.items() if path is None]
    if missing:
        raise UserError(f"--annotation-dir {str(folder)!r} lacks {', '.join(missing)} (AMBER's data/ folder).")
    fix = "use AMBER's own data/ files (or drop --annotation-dir for the packaged copy)"
    annotations = {int(item["id"]): item for item in read_json_file(files["annotations.json"], fix, read_text)}
    association = read_json_file(files["relation.json"], fix, read_text)
    safe = frozenset(line.strip() for line in read_text(files["safe_words.txt"]).splitlines() if line.strip())
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


@dataclass(frozen=True)
class NounMatcher:
    """How captions become AMBER objects: ``official`` (NLTK nouns + spaCy similarity) or ``fallback``.

    Attributes:
        name: "official" or "fallback".
        note: what was used (and, for the fallback, why), carried into every result.
        nouns: (caption, vocabulary) -> the vocabulary objects it mentions, in order, with repeats.
        similar: (mention, annotated word) -> whether they match by similarity; None: exact matches only.
    """

    name: str
    note: str
    nouns: Callable[[str, frozenset], list]
    similar: Optional[Callable[[str, str], bool]] = None


def fallback_matcher(reason: str = "") -> NounMatcher:
    """The documented fallback (module docstring); `reason`: why the official matching is not used."""
    note = FALLBACK_NOTE + (f" ({reason})" if reason else "")
    return NounMatcher("fallback", note, extract_objects)


def _nltk_nouns(text: str, vocabulary: frozenset) -> list:
    """The official evaluator's extract_nouns, restricted to AMBER's vocabulary as it then does."""
    import nltk
    from nltk.stem import WordNetLemmatizer

    lemmatizer = WordNetLemmatizer()
    nouns = [lemmatizer.lemmatize(word) for word, tag in nltk.pos_tag(nltk.word_tokenize(text)) if tag.startswith("NN")]
    return [noun for noun in nouns if noun in vocabulary]


def _spacy_similarity(nlp, threshold: float = SIMILARITY_THRESHOLD) -> Callable[[str, str], bool]:
    """The official check_synonyms_word: spaCy similarity of the two words > threshold (docs cached)."""
    document = lru_cache(maxsize=None)(nlp)
    return lambda first, second: document(first).similarity(document(second)) > threshold


@lru_cache(maxsize=1)
def official_matcher() -> NounMatcher:
    """The official evaluator's matching (loaded once per process: en_core_web_lg is large).

    Raises:
        ImportError / OSError / LookupError: spaCy, en_core_web_lg, NLTK or its data is not installed.
    """
    _nltk_nouns("A dog runs.", frozenset({"dog"}))  # ImportError without NLTK, LookupError without its data
    import spacy

    nlp = spacy.load("en_core_web_lg")  # OSError when the model is not installed
    return NounMatcher("official", OFFICIAL_NOTE, _nltk_nouns, _spacy_similarity(nlp))


def noun_matcher(mode: str = "auto") -> NounMatcher:
    """The matcher for `mode`: auto (official where installed, else the fallback), official, fallback.

    Raises:
        ValueError: unknown mode, or `official` without spaCy / en_core_web_lg / NLTK data (with the fix).
    """
    if mode not in NOUN_MODES:
        raise UserError(f"--amber-nouns (={mode!r}) must be one of {', '.join(NOUN_MODES)}.")
    if mode == "fallback":
        return fallback_matcher("chosen with --amber-nouns fallback")
    try:
        return official_matcher()
    except (ImportError, OSError, LookupError) as error:
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
    if mode == "official":
        raise UserError(f"--amber-nouns official needs spaCy with en_core_web_lg and NLTK with its data ({reason}); "
                        f"install them: {_OFFICIAL_INSTALL}")
    return fallback_matcher(f"official matching unavailable: {reason}")


def _annotated(words: list, association: dict) -> list:
    """(word, index of its annotated object): the synonyms of words[0], words[1], ..., then the words
    themselves: the official evaluator's search order."""
    synonyms = [(synonym, index) for index, word in enumerate(words) for synonym in association.get(word, ())]
    return synonyms + [(word, index) for index, word in enumerate(words)]


def _first(obj: str, candidates: list, same: Callable[[str, str], bool]):
    """Index of the annotated object of the first candidate word that `same(obj, word)` accepts."""
    for word, index in candidates:
        if same(obj, word):
            return index
    return None


def _exact(first: str, second: str) -> bool:
    return first == second


def generative_item(objects: list, entry: dict, refs: AmberReferences, similar=None) -> dict:
    """Counts of one caption: mentions, hallucinated mentions, covered truth, mentioned hallu objects.

    Per mention that is not a safe word (the official evaluator's order): an exact truth match covers
    its object; otherwise an exact hallu match counts for Cog, and with `similar` a similar hallu word
    counts for Cog too and a similar truth word covers its object (then it is no hallucination);
    whatever covers nothing is a hallucinated mention.
    """
    truth, hallu = _annotated(entry["truth"], refs.association), _annotated(entry["hallu"], refs.association)
    covered, cognition = set(), set()
    hallucinated = 0
    for obj in objects:
        if obj in refs.safe_words:
            continue
        index = _first(obj, truth, _exact)
        if index is not None:
            covered.add(index)
            continue
        for same in (_exact, similar) if similar else (_exact,):
            index = _first(obj, hallu, same)
            if index is not None:
                cognition.add(index)
        index = _first(obj, truth, similar) if similar else None
        if index is not None:
            covered.add(index)
            continue
        hallucinated += 1
    return {"mentions": len(objects), "hallucinated": hallucinated, "covered": len(covered),
            "truth": len(entry["truth"]), "cog": len(cognition), "hallu": len(entry["hallu"])}


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
        raise UserError(f"answer to question {record['question_id']!r} is not an AMBER id in annotations.json.") \
            from None


def score_amber(records: list, refs: AmberReferences, rule: str = "llava",
                matcher: Optional[NounMatcher] = None) -> dict:
    """Generative and discriminative AMBER metrics and the AMBER score (percent).

    Args:
        matcher: how captions become objects; None: `noun_matcher("auto")` (official where installed).
    """
    normalise = get_rule(rule)
    matcher = matcher or noun_matcher("auto")
    captions, pairs_by_type = [], {}
    for record in records:
        entry = _entry(refs, record)
        if entry["type"] == "generative":
            objects = matcher.nouns(record["text"], refs.vocabulary)
            captions.append(generative_item(objects, entry, refs, matcher.similar))
        else:
            pairs_by_type.setdefault(entry["type"], []).append((entry["truth"], normalise(record["text"])))
    generative = _generative(captions) if captions else None
    discriminative = _discriminative(pairs_by_type) if pairs_by_type else None
    score = None
    if generative and discriminative and generative["CHAIR"] is not None:
        score = (100 - generative["CHAIR"] + discriminative["F1"]) / 2
    return {"generative": generative, "discriminative": discriminative, "amber_score": score, "rule": rule,
            "unit": UNIT, "nouns": matcher.name, "noun_extractor": matcher.note}


def headline(result: dict) -> dict:
    """CHAIR, Cover, Hal, Cog, Accuracy, Precision, Recall, F1 and the AMBER score (percent), for comparisons."""
    table = {}
    for key in ("CHAIR", "Cover", "Hal", "Cog"):
        if result["generative"] and result["generative"][key] is not None:
            table[key] = result["generative"][key]
    for key in ("Accuracy", "Precision", "Recall", "F1"):
        if result["discriminative"] and result["discriminative"][key] is not None:
            table[key] = result["discriminative"][key]
    if result["amber_score"] is not None:
        table["AMBER score"] = result["amber_score"]
    return table


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report(result: dict) -> str:
    """A human-readable summary."""
    lines = [f"AMBER ({UNIT}), answer rule: {result['rule']}"]
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
    lines.append(f"nouns: {result['nouns']}: {result['noun_extractor']}")
    return "\n".join(lines)
