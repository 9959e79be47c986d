"""The registry of supported benchmarks: how to read their questions and where their images live.

POPE's question files and AMBER's queries ship inside the package (``llava_avc/eval/data``): without
``--question-file`` a run uses the benchmark's default packaged set (POPE: ``coco_pope_random``;
AMBER: ``query_all``, the whole benchmark), and ``--question-file NAME`` picks another packaged set by
its name (``coco_pope_adversarial``, ``gqa_pope_seem_popular``, ``query_generative``, ...). A path is
read as the user's own file. MME is not redistributable: its folder is always the user's.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import answers as ans
from . import questions as q


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its question reader and what the user must provide.

    Attributes:
        name: registry key (``pope``, ``mme``, ``amber``).
        title: human-readable name.
        load: reads the ORIGINAL question file (or folder) into `Question` objects.
        question_hint: what `--question-file` should point at (shown when it is missing).
        check_shape: `(questions, source)` -> None, or ValueError when the questions do not have this
            benchmark's shape (another benchmark's file; POPE questions without labels), before anything loads.
        images_in_question_folder: the question folder also holds the images (MME's layout).
        default_questions: the packaged question set used when no `--question-file` is given.
    """

    name: str
    title: str
    load: Callable[[str], list]
    question_hint: str
    check_shape: Callable[[list, str], None]
    images_in_question_folder: bool = False
    default_questions: Optional[str] = None

    def question_source(self, question_file: Optional[str], image_folder: Optional[str]) -> str:
        """The question file to read: the user's path, or the packaged file a name (or the default) names.

        Raises:
            ValueError: nothing given and no default; FileNotFoundError: neither a path nor a packaged name.
        """
        if question_file:
            return str(q.question_path(self.name, question_file))
        if self.images_in_question_folder and image_folder:
            return image_folder
        if self.default_questions:
            return str(q.question_path(self.name, self.default_questions))
        raise ValueError(f"{self.name} needs --question-file: {self.question_hint}.")

    def packaged(self) -> list:
        """Names of the question sets shipped inside the package (empty for MME)."""
        return list(q.packaged_question_files(self.name))

    def image_root(self, question_file: str, image_folder: Optional[str]) -> str:
        """The folder image paths are relative to."""
        if image_folder:
            return image_folder
        if self.images_in_question_folder and Path(question_file).is_dir():
            return question_file
        raise ValueError(f"{self.name} needs --image-folder (the folder holding the benchmark's images).")


BENCHMARKS = {
    "pope": Benchmark("pope", "POPE", q.load_pope,
                      "a packaged POPE set such as coco_pope_random, or your POPE question file", q.check_pope_shape,
                      default_questions="coco_pope_random"),
    "mme": Benchmark("mme", "MME", q.load_mme,
                     "the MME_Benchmark_release_version folder (or LLaVA's llava_mme.jsonl)", q.check_mme_shape,
                     images_in_question_folder=True),
    "amber": Benchmark("amber", "AMBER", q.load_amber, "a packaged AMBER query set such as query_all, or your "
                       "query_*.json", q.check_amber_shape, default_questions="query_all"),
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`.

    Raises:
        ValueError: unknown name; the message suggests the nearest registered one.
    """
    key = name.strip().lower()
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    close = difflib.get_close_matches(key, BENCHMARKS, n=1, cutoff=0.3)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}.{hint}")


def recorded_question_file(benchmark: Benchmark, recorded: str) -> Optional[Path]:
    """The question file a run.json names; the packaged copy of that name when the recorded path is gone
    (a reinstalled package); None when neither exists."""
    name = recorded if Path(recorded).exists() else q.bare_name(Path(recorded).name)
    try:
        return q.question_path(benchmark.name, name)
    except FileNotFoundError:
        return None


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
    """Ids of the `questions` no record answers (MME: matched as its scorer matches, by question text)."""
    if benchmark.name == "mme":
        from .score_mme import answered_questions

        answered = answered_questions(records, questions)
    else:
        answered = {record["question_id"] for record in records}
    return [question.qid for question in questions if question.qid not in answered]
