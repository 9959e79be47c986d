"""POPE's question files and AMBER's queries and annotations ship inside the package (llava_avc/eval/data):
byte for byte the originals (checked against the checksums of data/README.md), with their licences, read by
name where a path was expected, and used by default when no --question-file is given."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from llava_avc.errors import UserError
from llava_avc.eval import questions as q
from llava_avc.eval.benchmarks import get_benchmark
from llava_avc.eval.score_amber import load_references

DATA = Path(q.__file__).resolve().parent / "data"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
POPE_NAMES = [f"{dataset}_pope_{kind}{category}" for dataset, kind in (("coco", ""), ("aokvqa", "seem_"),
                                                                      ("gqa", "seem_"))
              for category in ("random", "popular", "adversarial")]


def _readme_checksums() -> dict:
    """{(folder, name): sha256} from the tables of data/README.md."""
    found, folder = {}, None
    for line in (DATA / "README.md").read_text().splitlines():
        heading = re.match(r"## `(\w+)/`", line)
        folder = heading.group(1) if heading else folder
        row = re.match(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", line)
        if row:
            found[(folder, row.group(1))] = row.group(2)
    return found


def _name(path: Path) -> str:
    """The README's name of a packaged file: question sets by their bare name, other files with their extension."""
    name = path.name[:-len(".gz")]
    return q.bare_name(name) if name.startswith("query_") or "_pope_" in name else name


def test_every_packaged_file_is_the_original_listed_in_the_readme_with_its_licence():
    listed = _readme_checksums()
    packaged = {(path.parent.name, _name(path)): path for path in DATA.glob("*/*.gz")}
    assert sorted(packaged) == sorted(listed)
    for key, path in packaged.items():
        assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == listed[key], key
    assert (DATA / "pope" / "LICENSE").read_text().startswith("MIT License")
    assert "Apache License" in (DATA / "amber" / "LICENSE").read_text()
    size = sum(path.stat().st_size for path in DATA.rglob("*") if path.is_file())
    assert size < 1_000_000, f"packaged data is {size} bytes"


def test_the_nine_pope_sets_load_by_name():
    assert sorted(get_benchmark("pope").packaged()) == sorted(POPE_NAMES)
    for name in POPE_NAMES:
        questions = q.load_pope(name)
        # POPE: 3,000 questions per set, 500 images x 6, half of the labels yes
        assert len(questions) == 3000 and len({x.image for x in questions}) == 500, name
        assert Counter(x.label for x in questions) == {"yes": 1500, "no": 1500}, name
        assert {x.category for x in questions} == {name.rsplit("_", 1)[1]}, name
        assert q.pope_dataset(name) == name.split("_")[0]


def test_a_pope_json_array_file_reads_with_line_numbers(tmp_path):
    items = [{"question_id": i, "image": f"{i}.jpg", "text": "Is there a cat?", "label": "no"} for i in (1, 2, 3)]
    path = tmp_path / "gqa_pope_seem_popular.json"
    path.write_text(json.dumps(items, indent=4))
    loaded = q.load_pope(path)
    # json.dumps(indent=4): "[", "{", then "question_id" on line 3; each object takes 6 lines
    assert [x.source.rsplit(", ", 1)[1] for x in loaded] == ["line 3", "line 9", "line 15"]
    assert [x.category for x in loaded] == ["popular"] * 3
    del items[1]["image"]
    path.write_text(json.dumps(items, indent=4))
    with pytest.raises(ValueError, match=r"line 9 \(item 1\): missing 'image'"):
        q.load_pope(path)


def test_amber_queries_and_references_load_from_the_package():
    questions = q.load_amber("query_all")
    # AMBER: 15,220 queries, ids 1-1004 generative
    assert len(questions) == 15220 and questions[0].qid == 1 and questions[-1].qid == 15220
    assert sum(x.category == "generative" for x in questions) == 1004
    assert len(q.load_amber("query_generative")) == 1004
    references = load_references()
    assert len(references.annotations) == 15220 and "dog" in references.vocabulary
    excerpt = load_references(FIXTURES / "amber")  # the tests' excerpt, cut from the same original
    assert all(references.annotations[i] == excerpt.annotations[i] for i in excerpt.annotations)
    assert references.association == excerpt.association and references.safe_words == excerpt.safe_words


def test_without_a_question_file_pope_and_amber_use_their_default_set_and_mme_asks(tmp_path):
    pope = Path(get_benchmark("pope").question_source(None, "coco/val2014"))
    assert pope == DATA / "pope" / "coco_pope_random.json.gz"
    assert Path(get_benchmark("amber").question_source(None, "AMBER/image")) == DATA / "amber" / "query_all.json.gz"
    with pytest.raises(ValueError, match="mme needs --question-file"):
        get_benchmark("mme").question_source(None, None)


def test_a_name_reads_the_packaged_copy_and_a_path_the_users_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = get_benchmark("pope").question_source
    assert Path(source("coco_pope_adversarial", None)).name == "coco_pope_adversarial.json.gz"
    assert Path(source("coco_pope_adversarial.json", None)).name == "coco_pope_adversarial.json.gz"
    own = tmp_path / "coco_pope_adversarial.json"  # the user's own file of that name wins
    own.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a cat?"}) + "\n")
    assert Path(source("coco_pope_adversarial.json", None)) == Path("coco_pope_adversarial.json")
    assert len(q.load_pope("coco_pope_adversarial.json")) == 1
    with pytest.raises(UserError, match="not a packaged pope question set .* Did you mean 'coco_pope_popular'"):
        source("coco_pope_populr", None)
    with pytest.raises(UserError, match="'data/coco_pope_random' does not exist"):
        source("data/coco_pope_random", None)  # a path is never swapped for the packaged copy
