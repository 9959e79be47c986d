"""The registry of supported benchmarks: how to read their questions and where their images live."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import questions as q


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its question reader and what the user must provide.

    Attributes:
        name: registry key (``pope``, ``mme``, ``amber``).
        title: human-readable name.
        load: reads the ORIGINAL question file (or folder) into `Question` objects.
        question_hint: what `--question-file` should point at (shown when it is missing).
        images_in_question_folder: the question folder also holds the images (MME's layout).
    """

    name: str
    title: str
    load: Callable[[str], list]
    question_hint: str
    images_in_question_folder: bool = False

    def question_source(self, question_file: Optional[str], image_folder: Optional[str]) -> str:
        """The question file to read, with a clear error when none was given."""
        if question_file:
            return question_file
        if self.images_in_question_folder and image_folder:
            return image_folder
        raise ValueError(f"{self.name} needs --question-file: {self.question_hint}.")

    def image_root(self, question_file: str, image_folder: Optional[str]) -> str:
        """The folder image paths are relative to."""
        if image_folder:
            return image_folder
        if self.images_in_question_folder and Path(question_file).is_dir():
            return question_file
        raise ValueError(f"{self.name} needs --image-folder (the folder holding the benchmark's images).")


BENCHMARKS = {
    "pope": Benchmark("pope", "POPE", q.load_pope,
                      "a POPE question file such as coco_pope_random.json (one JSON object per line)"),
    "mme": Benchmark("mme", "MME", q.load_mme,
                     "the MME_Benchmark_release_version folder (or LLaVA's llava_mme.jsonl)",
                     images_in_question_folder=True),
    "amber": Benchmark("amber", "AMBER", q.load_amber, "AMBER's query_all.json (or a query_*.json)"),
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
