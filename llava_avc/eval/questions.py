"""Readers of the benchmarks' ORIGINAL question files, accepted unchanged.

- POPE: one JSON object per line (the MS-COCO files), or one JSON array of them (the A-OKVQA
  and GQA files), with ``question_id``, ``image``, ``text`` (``label``, ``category`` optional; the
  category defaults to random / popular / adversarial from a file name such as
  ``coco_pope_random.json``).
- AMBER: ``query_all.json`` (or any of its ``query_*.json``): a JSON list of
  ``{"id", "image", "query"}``; ids 1-1004 are the generative "Describe this image." items.
- MME: the official ``MME_Benchmark_release_version`` folder (per category either
  ``<category>/images/*.jpg`` + ``<category>/questions_answers_YN/*.txt``, or
  ``<category>/*.png|jpg`` next to ``<category>/*.txt``; each txt line ``question<TAB>answer``, or
  ``image<TAB>question<TAB>answer``), or LLaVA's converted ``llava_mme.jsonl``.

Every reader returns a list of `Question`; errors name the file and the line. POPE's question files
and AMBER's queries also ship inside the package (``data/``, gzip-compressed, licences and sources in
``data/README.md``): a bare name such as ``coco_pope_random`` or ``query_all`` that is not an existing
path reads the packaged copy (`question_path`); ``.gz`` files are read transparently.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError
from .inputs import field_problem

#: MME's own sub-task folder names (calculation.py's eval_type_dict).
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_YES_NO_SUFFIX = "Please answer yes or no."
AMBER_GENERATIVE_MAX_ID = 1004
_IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
#: the benchmark data shipped inside the package (data/README.md: sources, licences, checksums)
DATA_DIR = Path(__file__).resolve().parent / "data"
_PACKAGED_QUESTIONS = {"pope": "*_pope_*.json.gz", "amber": "query_*.json.gz"}
_DATA_SUFFIXES = (".json.gz", ".jsonl.gz", ".json", ".jsonl")


@dataclass
class Question:
    """One benchmark question.

    Attributes:
        qid: the question id as in the file (int or str); MME ids are ``category/image`` with
            ``#k`` appended to the k-th further question about the same image.
        image: image path relative to the image folder.
        text: the question (MME: without "Please answer yes or no.").
        yes_no: whether it is a yes/no question (the llava protocol suffixes those).
        label: ground truth "yes" / "no" when the file has it.
        category: POPE split, MME sub-task, AMBER "generative" / "discriminative".
        source: "file, line N" for messages.
    """

    qid: Any
    image: str
    text: str
    yes_no: bool = True
    label: Optional[str] = None
    category: Optional[str] = None
    source: str = ""
    extra: dict = field(default_factory=dict)


def fingerprint(questions: list) -> str:
    """A short hash of the question set (ids, images, texts): part of the run configuration."""
    digest = hashlib.sha256()
    for question in questions:
        digest.update(json.dumps([question.qid, question.image, question.text]).encode())
    return digest.hexdigest()[:16]


def packaged_question_files(benchmark: str) -> dict:
    """{name: path} of the question files shipped for `benchmark` (none for MME: not redistributable)."""
    pattern = _PACKAGED_QUESTIONS.get(benchmark)
    if pattern is None:
        return {}
    return {bare_name(path.name): path for path in sorted((DATA_DIR / benchmark).glob(pattern))}


def bare_name(name: str) -> str:
    """A data file's name without its .json / .jsonl / .gz extensions (coco_pope_random)."""
    for suffix in _DATA_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def question_path(benchmark: str, value) -> Path:
    """The question file `value` names: a path that exists, else (a bare name) the packaged copy.

    Raises:
        UserError: neither; the message lists the packaged names and the nearest one.
    """
    path = Path(str(value)).expanduser()
    if path.exists():
        return path
    packaged = packaged_question_files(benchmark)
    if path.name == str(value) and bare_name(path.name) in packaged:
        return packaged[bare_name(path.name)]
    if not packaged:
        raise UserError(f"question file {str(value)!r} does not exist.")
    close = difflib.get_close_matches(bare_name(path.name), packaged, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"question file {str(value)!r} does not exist and is not a packaged {benchmark} "
                    f"question set ({', '.join(packaged)}).{hint}")


def open_text(path):
    """A UTF-8 text handle on `path`, decompressed when its name ends in .gz."""
    path = Path(path)
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_text(path) -> str:
    """The whole text of `path` (gunzipped when it ends in .gz)."""
    with open_text(path) as handle:
        return handle.read()


def _json_line(path: Path, lineno: int, raw: str, required: tuple) -> dict:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}, line {lineno}: not valid JSON ({error.msg}); expected one JSON object "
                        "per line.") from error
    if not isinstance(item, dict):
        raise UserError(f"{path}, line {lineno}: expected a JSON object, found {type(item).__name__}.")
    missing = [key for key in required if key not in item]
    if missing:
        raise UserError(f"{path}, line {lineno}: missing {', '.join(repr(k) for k in missing)} "
                        f"(a question needs {', '.join(required)}).")
    return item


def read_jsonl(path, required: tuple) -> list:
    """(line number, object) for each non-blank line of a JSONL file, checked for `required` keys."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"question file {str(path)!r} does not exist.")
    with open_text(path) as handle:
        return [(lineno, _json_line(path, lineno, raw, required))
                for lineno, raw in enumerate(handle, 1) if raw.strip()]


def check_unique(questions: list) -> list:
    """Raise ValueError naming both places when a question id appears twice."""
    seen: dict = {}
    for question in questions:
        problem = field_problem("question_id", question.qid, (int, str), False)  # an id must be hashable here
        if problem is not None:
            raise UserError(f"{question.source}: {problem}; fix that record (nothing was answered).")
        if question.qid in seen:
            raise UserError(f"question_id {question.qid!r} appears twice ({seen[question.qid]} and "
                            f"{question.source}); question ids must be unique.")
        seen[question.qid] = question.source
    return questions


def pope_category(path) -> Optional[str]:
    """random / popular / adversarial from a POPE file name (coco_pope_random.json, ...)."""
    match = re.search(r"_pope_(?:seem_)?([a-z]+)\.jsonl?(?:\.gz)?$", Path(path).name)
    return match.group(1) if match else None


def pope_dataset(path) -> Optional[str]:
    """coco / aokvqa / gqa from a POPE file name (coco_pope_random.json, gqa_pope_seem_popular.json, ...;
    LLaVA's llava_pope_test.jsonl is MS-COCO)."""
    name = Path(str(path)).name
    if name.startswith("llava_pope"):
        return "coco"
    match = re.match(r"([a-z]+)_pope_", name)
    return match.group(1) if match else None


def load_pope(path) -> list:
    """POPE questions from a JSONL file or a JSON array (the POPE files, LLaVA's llava_pope_test.jsonl),
    or a packaged question set by name (coco_pope_random, ...)."""
    path = question_path("pope", path)
    default_category = pope_category(path)
    questions = [
        Question(item["question_id"], item["image"], item["text"], True, item.get("label"),
                 item.get("category", default_category), f"{path}, line {lineno or '?'}")
        for lineno, item in _pope_items(path)
    ]
    return check_unique(questions)


def _pope_items(path: Path) -> list:
    required = ("question_id", "image", "text")
    text = read_text(path)
    if not _is_json_array(text):
        return read_jsonl(path, required)
    items = _array_items(path, text, "question_id")
    for index, (lineno, item) in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{path}, line {lineno or '?'} (item {index}): expected a JSON object, found "
                            f"{type(item).__name__}.")
        missing = [key for key in required if key not in item]
        if missing:
            raise UserError(f"{path}, line {lineno or '?'} (item {index}): missing "
                            f"{', '.join(repr(k) for k in missing)} (a question needs {', '.join(required)}).")
    return items


def _is_json_array(text: str) -> bool:
    return text.lstrip().startswith("[")


def _array_items(path: Path, text: str, id_key: str) -> list:
    """(line number or None, element) of a JSON array file; the line is where the element's id is."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}, line {error.lineno}: not valid JSON ({error.msg}).") from error
    return list(zip(_array_lines(text, items, id_key), items))


def _array_lines(text: str, items: list, id_key: str) -> list:
    """The line of each element's ``"id_key": value``, found in ONE forward pass over the file (the
    elements are in file order)."""
    keys = re.compile(rf'"{re.escape(id_key)}"\s*:\s*("(?:[^"\\]|\\.)*"|[-+\w.]+)')
    found = [(match.start(), _json_value(match.group(1))) for match in keys.finditer(text)]
    lines, line, position, cursor = [], 1, 0, 0
    for item in items:
        has_id = isinstance(item, dict) and id_key in item
        index = cursor
        while has_id and index < len(found) and found[index][1] != item[id_key]:
            index += 1
        if not has_id or index == len(found):
            lines.append(None)
            continue
        line += text.count("\n", position, found[index][0])
        position, cursor = found[index][0], index + 1
        lines.append(line)
    return lines


def _json_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def _amber_items(path: Path) -> list:
    text = read_text(path)
    if _is_json_array(text):
        return _array_items(path, text, "id")
    return read_jsonl(path, ())


def load_amber(path) -> list:
    """AMBER queries from query_all.json (a JSON list of {"id", "image", "query"}) or a JSONL file, or a
    packaged query set by name (query_all, query_generative, ...)."""
    path = question_path("amber", path)
    if not path.is_file():
        raise UserError(f"question file {str(path)!r} is not a file (AMBER's query_all.json).")
    questions = []
    for index, (lineno, item) in enumerate(_amber_items(path)):
        missing = [k for k in ("id", "image", "query") if not isinstance(item, dict) or k not in item]
        if missing:
            raise UserError(f"{path}, line {lineno or '?'} (item {index}): missing "
                            f"{', '.join(repr(k) for k in missing)}; AMBER queries have id, image, query.")
        generative = isinstance(item["id"], int) and item["id"] <= AMBER_GENERATIVE_MAX_ID
        questions.append(Question(item["id"], item["image"], item["query"], not generative, None,
                                  "generative" if generative else "discriminative",
                                  f"{path}, line {lineno or '?'}"))
    return check_unique(questions)


def load_mme(path) -> list:
    """MME questions from the official folder, or from LLaVA's llava_mme.jsonl."""
    path = Path(path)
    if path.is_dir():
        return check_unique(_load_mme_folder(path))
    questions = []
    for lineno, item in read_jsonl(path, ("question_id", "image", "text")):
        category = item.get("category") or str(item["question_id"]).split("/")[0]
        questions.append(Question(item["question_id"], item["image"], item["text"], True, item.get("label"),
                                  category, f"{path}, line {lineno}"))
    return check_unique(_number_repeats(questions))


def _number_repeats(questions: list) -> list:
    """LLaVA's MME ids name the image only: the k-th further question of an image gets `#k`."""
    counts: dict = {}
    for question in questions:
        seen = counts.get(question.qid, 0)
        counts[question.qid] = seen + 1
        if seen:
            question.qid = f"{question.qid}#{seen}"
    return questions


def _mme_root(path: Path) -> Path:
    known = set(MME_PERCEPTION + MME_COGNITION)
    if any((path / name).is_dir() for name in known):
        return path
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if any((child / name).is_dir() for name in known):
            return child  # e.g. MME_Benchmark_release_version/MME_Benchmark
    raise UserError(f"{path} is not an MME folder: none of its sub-folders is an MME sub-task "
                    f"({', '.join(MME_PERCEPTION + MME_COGNITION)}).")


def _mme_dirs(category_dir: Path) -> tuple:
    """(image folder, question folder) of one MME sub-task, for both official layouts."""
    images = category_dir / "images"
    if not images.is_dir():
        return category_dir, category_dir
    for name in ("questions_answers_YN", "questions_answer_YES_NO", "questions_answers_YES_NO"):
        if (category_dir / name).is_dir():
            return images, category_dir / name
    found = [p for p in category_dir.iterdir() if p.is_dir() and p.name.startswith("question")]
    if not found:
        raise UserError(f"{category_dir}: has images/ but no questions_answers_YN/ folder.")
    return images, found[0]


def _image_name(image_dir: Path, stem: str) -> str:
    for extension in _IMAGE_EXTENSIONS:
        if (image_dir / (stem + extension)).is_file():
            return stem + extension
    return stem + ".jpg"  # reported as missing (with the question id) when the run reaches it


def _load_mme_folder(folder: Path) -> list:
    root = _mme_root(folder)
    questions = []
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "eval_tool"):
        image_dir, qa_dir = _mme_dirs(category_dir)
        for txt in sorted(qa_dir.glob("*.txt")):
            questions.extend(_mme_txt(folder, category_dir.name, image_dir, txt))
    if not questions:
        raise UserError(f"{folder}: no MME question files (*.txt) found.")
    return _number_repeats(questions)


def _mme_txt(folder: Path, category: str, image_dir: Path, txt: Path) -> list:
    questions = []
    for lineno, raw in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        fields = raw.strip().split("\t")
        if len(fields) not in (2, 3) or fields[-1].strip().lower() not in ("yes", "no"):
            raise UserError(f"{txt}, line {lineno}: expected 'question<TAB>Yes|No' (or "
                            f"'image<TAB>question<TAB>Yes|No'), found {raw.strip()[:80]!r}.")
        image = fields[0] if len(fields) == 3 else _image_name(image_dir, txt.stem)
        original = fields[-2].strip()
        text = original.replace(MME_YES_NO_SUFFIX, "").strip()
        relative = (image_dir / image).relative_to(folder).as_posix()
        questions.append(Question(f"{category}/{Path(image).name}", relative, text, True, fields[-1].strip().lower(),
                                  category, f"{txt}, line {lineno}", {"mme_question": original}))
    return questions


# ------------------------------------------------------------------ each benchmark's shape, checked at start
POPE_LABELS = ("yes", "no")


def check_pope_shape(questions: list, source) -> None:
    """Every POPE question carries its yes/no `label` (the score is computed against it).

    Raises:
        ValueError: the first question without one, naming its place and the fix.
    """
    for question in questions:
        label = str(question.label).strip().lower() if question.label is not None else None
        if label not in POPE_LABELS:
            found = "no 'label'" if question.label is None else f"label {question.label!r}"
            raise UserError(f"{question.source or source}: POPE question {question.qid!r} has {found}; POPE is scored "
                            "against each question's yes/no label: pass a POPE question file with labels (a "
                            "packaged set such as coco_pope_random, or the POPE authors' files). Nothing was answered.")


def check_mme_shape(questions: list, source) -> None:
    """Every MME question belongs to an MME sub-task (its category, or its id's `category/` prefix).

    Raises:
        ValueError: the first question outside MME's sub-tasks: the source is another benchmark's file.
    """
    known = MME_PERCEPTION + MME_COGNITION
    for question in questions:
        if question.category not in known:
            raise UserError(f"{question.source or source}: question {question.qid!r} belongs to no MME sub-task "
                            f"(category {question.category!r}): {source} is not an MME question source (another "
                            "benchmark's file?); pass the MME_Benchmark_release_version folder or LLaVA's "
                            "llava_mme.jsonl. Nothing was answered.")


def check_amber_shape(questions: list, source) -> None:
    """Every AMBER query id is a positive integer (ids 1-1004 are the generative items)."""
    for question in questions:
        if isinstance(question.qid, bool) or not isinstance(question.qid, int) or question.qid < 1:
            raise UserError(f"{question.source or source}: AMBER query id {question.qid!r} is not a positive integer; "
                            f"{source} is not an AMBER query file (query_all.json). Nothing was answered.")
