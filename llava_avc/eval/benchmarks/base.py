"""The `Benchmark` base class, `ScoreOptions` and the registry (the package's `__init__` registers the
built-in benchmarks and re-exports these names)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...errors import UserError
from .. import answers as ans
from .. import questions as q


@dataclass(frozen=True)
class ScoreOptions:
    """What `llava-avc score` passes to `Benchmark.score` besides the answers.

    Attributes:
        question_file: the question set the answers should answer (a path or a packaged name), or None.
        annotation_dir: a folder of ground-truth files (POPE's per-category files, AMBER's annotations).
        amber_nouns: AMBER's noun extraction (auto / official / fallback).
    """

    question_file: Optional[str] = None
    annotation_dir: Optional[str] = None
    amber_nouns: str = "auto"


class Benchmark:
    """One benchmark. Subclasses set the class attributes and implement `load`, `score`, `report`, `headline`.

    Attributes:
        name: registry key (``pope``), as typed after ``llava-avc eval``.
        title: human-readable name (``POPE``).
        unit: what every number of its scores is (said in every table and JSON).
        question_hint: what ``--question-file`` should point at (shown when it is missing or wrong).
        default_questions: the packaged question set used when no ``--question-file`` is given.
        images_in_question_folder: the question folder also holds the images (MME's layout).
        first_line_under: the protocols under which only a question's first line is asked
            (the AvisC scripts cut MME's questions so).
        reference_by_dataset: published reference tables give one table per question set (POPE).
    """

    name: str = ""
    title: str = ""
    unit: str = ""
    question_hint: str = ""
    default_questions: Optional[str] = None
    images_in_question_folder: bool = False
    first_line_under: tuple = ()
    reference_by_dataset: bool = False

    # ------------------------------------------------------------------ questions

    def load(self, source: str) -> list:
        """Read the ORIGINAL question file (or folder) `source` into `Question` objects."""
        raise NotImplementedError(f"{type(self).__name__}.load")

    def check_shape(self, questions: list, source: str) -> None:
        """Raise ValueError when `questions` do not have this benchmark's shape (another benchmark's
        file, questions without labels), before anything loads. The default accepts everything."""

    def question_source(self, question_file: Optional[str], image_folder: Optional[str]) -> str:
        """The question file to read: the user's path, or the packaged file a name (or the default) names.

        Raises:
            UserError: nothing given and no default, or neither a path nor a packaged name.
        """
        if question_file:
            return str(q.question_path(self.name, question_file))
        if self.images_in_question_folder and image_folder:
            return image_folder
        if self.default_questions:
            return str(q.question_path(self.name, self.default_questions))
        raise UserError(f"{self.name} needs --question-file: {self.question_hint}.")

    def packaged(self) -> list:
        """Names of the question sets shipped inside the package (empty when none ship)."""
        return list(q.packaged_question_files(self.name))

    def image_root(self, question_file: str, image_folder: Optional[str]) -> str:
        """The folder image paths are relative to."""
        if image_folder:
            return image_folder
        if self.images_in_question_folder and Path(question_file).is_dir():
            return question_file
        raise UserError(f"{self.name} needs --image-folder (the folder holding the benchmark's images).")

    def question_text(self, question, protocol) -> str:
        """The question exactly as the model sees it (after the image token) under `protocol`: the
        first line only where `first_line_under` names the protocol; the protocol's suffix on yes/no
        questions that do not already end with it."""
        text = question.text
        if protocol.name in self.first_line_under:
            text = text.split("\n")[0]
        if protocol.suffix and question.yes_no and protocol.suffix not in text:
            text = text + "\n" + protocol.suffix
        return text

    # ------------------------------------------------------------------ answers and scores

    def answered(self, records: list, questions: list) -> set:
        """Ids of the `questions` that `records` answer (by ``question_id``, unless a benchmark matches
        as its own scorer does)."""
        return {record["question_id"] for record in records}

    def score(self, records: list, options: ScoreOptions, rule: str):
        """Score the answer `records` (dicts of an answers file) read with the yes/no `rule`."""
        raise NotImplementedError(f"{type(self).__name__}.score")

    def report(self, result, rule: str) -> str:
        """A human-readable table of a `score` result."""
        raise NotImplementedError(f"{type(self).__name__}.report")

    def public(self, result) -> dict:
        """The ``--json`` data of a `score` result."""
        return result

    def headline(self, result) -> dict:
        """{metric: number} of a `score` result: what comparisons, seeds and references line up."""
        raise NotImplementedError(f"{type(self).__name__}.headline")


_REGISTRY: dict = {}


def register_benchmark(benchmark: Benchmark, *, replace: bool = False) -> Benchmark:
    """Make `benchmark` available to `get_benchmark`, `llava-avc eval` and `llava-avc score` by its name.

    Raises:
        ValueError: an empty or non-lowercase name, or a name already registered (unless `replace`).
        TypeError: not a `Benchmark`.
    """
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"register_benchmark takes a Benchmark instance, got {type(benchmark).__name__}.")
    name = benchmark.name
    if not name or name != name.strip().lower():
        raise UserError(f"a benchmark's name must be a non-empty lowercase word, got {name!r}.")
    if name in _REGISTRY and not replace:
        raise UserError(f"benchmark {name!r} is already registered; pass replace=True to replace it.")
    _REGISTRY[name] = benchmark
    return benchmark


def unregister_benchmark(name: str) -> None:
    """Remove a registered benchmark (a no-op for a name never registered)."""
    _REGISTRY.pop(name, None)


def benchmark_names() -> list:
    """The registered benchmarks' names, built-in ones first."""
    return list(_REGISTRY)


def registered() -> list:
    """The registered `Benchmark` objects."""
    return list(_REGISTRY.values())


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`.

    Raises:
        ValueError: unknown name; the message suggests the nearest registered one.
    """
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, _REGISTRY, n=1, cutoff=0.3)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown benchmark {name!r}; choose one of {', '.join(_REGISTRY)}.{hint}")


def recorded_question_file(benchmark: Benchmark, recorded: str) -> Optional[Path]:
    """The question file a run.json names; the packaged copy of that name when the recorded path is gone
    (a reinstalled package); None when neither exists."""
    if Path(recorded).exists():
        return Path(recorded)
    return q.packaged_question_files(benchmark.name).get(q.bare_name(Path(recorded).name))


def expected_questions(benchmark: Benchmark, question_file: Optional[str], answers_file) -> Optional[list]:
    """The questions an answers file should answer: `question_file` (a path or a packaged name), else the
    run's own question file (run.json), cut to the run's --limit and chunk; None when neither is known."""
    run = ans.run_record(answers_file)
    recorded = run.get("question_file")
    if question_file:
        source = Path(benchmark.question_source(question_file, None))
    elif recorded:
        source = recorded_question_file(benchmark, recorded)
    else:
        source = None
    if source is None:
        return None
    questions = benchmark.load(str(source))
    if recorded and q.bare_name(Path(recorded).name) == q.bare_name(source.name):
        questions = questions[:run["limit"]] if run.get("limit") is not None else questions
        chunk = ans.chunk_of(answers_file)
        questions = ans.get_chunk(questions, chunk[1], chunk[0]) if chunk else questions
    return questions


def missing_answers(benchmark: Benchmark, questions: list, records: list) -> list:
    """Ids of the `questions` no record answers (as `benchmark.answered` matches them)."""
    answered = benchmark.answered(records, questions)
    return [question.qid for question in questions if question.qid not in answered]
