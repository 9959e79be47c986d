"""AMBER's generative metrics: the official evaluator's matching (NLTK nouns, spaCy similarity > 0.8) where
spaCy with en_core_web_lg is installed, the documented fallback otherwise, and the result says which.

spaCy's en_core_web_lg and NLTK's data cannot be installed offline, so the official path is tested with
stand-ins for `nltk` and `spacy` (modules put in sys.modules) that behave as described; the counts they must
give follow the official inference.py's bookkeeping and are worked out by hand in each test.
"""

from __future__ import annotations

import sys
import types

import pytest

from llava_avc.eval import score_amber as sa
from llava_avc.interfaces.cli import main


@pytest.fixture(scope="module")
def refs():
    return sa.load_references()  # the packaged copy of AMBER's data/


@pytest.fixture(autouse=True)
def fresh_official_matcher():
    sa.official_matcher.cache_clear()
    yield
    sa.official_matcher.cache_clear()


def _record(qid, text):
    return {"question_id": qid, "prompt": "Describe this image.", "text": text, "metadata": {"benchmark": "amber"}}


# id 1: truth sky, forest, grass, person (synonyms include man), lake, mountain, road; hallu cloud, sun, bird, dog,
# flower (relation.json: mountain's synonyms are hill, rock, stone, reef; none of horse, cat, car is a synonym
# of these). The stand-in similarity: identical words (as spaCy's similarity of a word with itself is 1), and
# horse~mountain, cat~dog, cloud~sky (arbitrary pairs: only the bookkeeping is under test).
SIMILAR = {("horse", "mountain"), ("cat", "dog"), ("cloud", "sky")}
MENTIONS = ["horse", "cat", "dog", "car", "man", "cloud"]


def _similar(first, second):
    return first == second or (first, second) in SIMILAR


def test_official_bookkeeping_with_similarity(refs):
    entry = refs.annotations[1]
    official = sa.generative_item(MENTIONS, entry, refs, _similar)
    # horse: similar to truth mountain -> covers it, no hallucination
    # cat: similar to hallu dog -> Cog; nothing in truth -> hallucinated
    # dog: exact hallu (Cog, same object); nothing in truth -> hallucinated
    # car: nothing -> hallucinated
    # man: exact synonym of truth person -> covers it
    # cloud: exact hallu (Cog) AND similar to truth sky -> covers sky, so NOT hallucinated (the official order)
    assert official == {"mentions": 6, "hallucinated": 3, "covered": 3, "truth": 7, "cog": 2, "hallu": 5}
    exact = sa.generative_item(MENTIONS, entry, refs, None)
    # exact only: horse, cat, dog, car, cloud hallucinated; man covers person; dog and cloud count for Cog
    assert exact == {"mentions": 6, "hallucinated": 5, "covered": 1, "truth": 7, "cog": 2, "hallu": 5}


def test_score_amber_with_an_official_matcher_says_so(refs):
    matcher = sa.NounMatcher("official", sa.OFFICIAL_NOTE, lambda text, vocabulary: list(MENTIONS), _similar)
    result = sa.score_amber([_record(1, "ignored by the stand-in")], refs, "paper", matcher)
    generative = result["generative"]
    assert generative["CHAIR"] == pytest.approx(100 * 3 / 6) and generative["Cover"] == pytest.approx(100 * 3 / 7)
    assert generative["Hal"] == pytest.approx(100.0) and generative["Cog"] == pytest.approx(100 * 2 / 5)
    assert result["nouns"] == "official" and "spaCy en_core_web_lg similarity > 0.8" in result["noun_extractor"]


def _fake_nltk():
    """word_tokenize splits on spaces, pos_tag tags words in NOUNS as NN / NNS, WordNet strips a plural s."""
    nouns = {"Dogs", "dogs", "cat", "grass", "run"}
    nltk = types.ModuleType("nltk")
    nltk.word_tokenize = lambda text: text.replace(".", " .").split()
    nltk.pos_tag = lambda tokens: [(t, ("NNS" if t.endswith("s") else "NN") if t in nouns else "VB") for t in tokens]
    stem = types.ModuleType("nltk.stem")

    class WordNetLemmatizer:
        def lemmatize(self, word):
            return word[:-1] if word.endswith("s") and not word.endswith("ss") else word

    stem.WordNetLemmatizer = WordNetLemmatizer
    nltk.stem = stem
    return {"nltk": nltk, "nltk.stem": stem}


def _fake_spacy(scores):
    spacy = types.ModuleType("spacy")

    class Doc:
        def __init__(self, text):
            self.text = text

        def similarity(self, other):
            return 1.0 if self.text == other.text else scores.get((self.text, other.text), 0.0)

    def load(name):
        assert name == "en_core_web_lg"
        return Doc

    spacy.load = load
    return spacy


def test_official_nouns_are_nltk_nn_tags_lemmatised_and_kept_in_the_vocabulary(monkeypatch):
    for name, module in _fake_nltk().items():
        monkeypatch.setitem(sys.modules, name, module)
    # NN-tagged: Dogs (-> Dog, not in the vocabulary: the official check is case-sensitive), dogs -> dog,
    # cat, grass (kept), run (NN but not in the vocabulary); "sky" is not tagged NN by the stand-in
    vocabulary = frozenset({"dog", "cat", "grass", "sky"})
    assert sa._nltk_nouns("Dogs and dogs see a cat on grass under sky. run", vocabulary) == ["dog", "cat", "grass"]


def test_auto_uses_the_official_matching_where_installed_with_similarity_above_point_eight(monkeypatch):
    for name, module in _fake_nltk().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "spacy", _fake_spacy({("puppy", "dog"): 0.81, ("kitten", "dog"): 0.8}))
    matcher = sa.noun_matcher("auto")
    assert matcher.name == "official" and matcher.note == sa.OFFICIAL_NOTE
    assert matcher.similar("puppy", "dog") and not matcher.similar("kitten", "dog")  # > 0.8, not >=
    assert sa.noun_matcher("fallback").name == "fallback"


def test_without_spacy_auto_falls_back_and_official_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy raises ImportError
    for name, module in _fake_nltk().items():
        monkeypatch.setitem(sys.modules, name, module)
    matcher = sa.noun_matcher("auto")
    assert matcher.name == "fallback" and "official matching unavailable: ModuleNotFoundError" in matcher.note
    with pytest.raises(ValueError, match="--amber-nouns official needs spaCy with en_core_web_lg.*python -m spacy "
                                         "download en_core_web_lg"):
        sa.noun_matcher("official")
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": 1, "prompt": "p", "text": "A man by the lake."}\n')
    assert main(["score", "amber", "--answers-file", str(answers)]) == 0
    assert "nouns: fallback:" in capsys.readouterr().out
    assert main(["score", "amber", "--answers-file", str(answers), "--amber-nouns", "official"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_missing_model_or_nltk_data_also_falls_back(monkeypatch):
    for name, module in _fake_nltk().items():
        monkeypatch.setitem(sys.modules, name, module)
    spacy = _fake_spacy({})

    def no_model(name):
        raise OSError(f"[E050] Can't find model '{name}'.")

    spacy.load = no_model
    monkeypatch.setitem(sys.modules, "spacy", spacy)
    assert "OSError: [E050] Can't find model 'en_core_web_lg'" in sa.noun_matcher("auto").note
    monkeypatch.setitem(sys.modules, "spacy", _fake_spacy({}))

    def no_data(tokens):
        raise LookupError("Resource averaged_perceptron_tagger_eng not found.")

    monkeypatch.setattr(sys.modules["nltk"], "pos_tag", no_data)
    assert "LookupError: Resource averaged_perceptron_tagger_eng" in sa.noun_matcher("auto").note
