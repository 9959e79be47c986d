"""The benchmark registry: one `Benchmark` object per benchmark, one module per built-in one.

A benchmark owns everything that differs between benchmarks: how its ORIGINAL question files are read
and checked (`load`, `check_shape`), where its questions and images come from (`question_source`,
`image_root`, its packaged default set), how a question is put to the model under a decoding protocol
(`question_text`), which questions an answers file answers (`answered`), and how answers are scored and
reported (`score`, `report`, `public`, `headline`, `unit`). The runner (`llava_avc.eval.runner`) and the
`eval` / `score` / `merge` commands only look benchmarks up by name (`get_benchmark`).

Built in: ``pope`` (`.pope`), ``mme`` (`.mme`), ``amber`` (`.amber`). A new benchmark is a subclass
registered once::

    from llava_avc.eval.benchmarks import Benchmark, register_benchmark

    class MyBench(Benchmark):
        name, title, unit = "mybench", "MyBench", "percent"
        question_hint = "your mybench.jsonl"
        def load(self, source): ...            # -> [Question]
        def score(self, records, options, rule): ...
        def report(self, result, rule): ...    # -> text
        def headline(self, result): ...        # -> {metric: number}

    register_benchmark(MyBench())

after which ``llava-avc eval mybench ...`` and ``llava-avc score mybench ...`` work (in the process that
registered it). POPE's question files and AMBER's queries ship inside the package: without
``--question-file`` a run uses the benchmark's default packaged set, and ``--question-file NAME`` picks
another packaged set by its name. A path is read as the user's own file.
"""

from __future__ import annotations

from .amber import Amber
from .base import (Benchmark, ScoreOptions, benchmark_names, expected_questions, get_benchmark, missing_answers,
                   recorded_question_file, register_benchmark, registered, unregister_benchmark)
from .mme import MME
from .pope import Pope

__all__ = ["Benchmark", "ScoreOptions", "benchmark_names", "expected_questions", "get_benchmark", "missing_answers",
           "recorded_question_file", "register_benchmark", "registered", "unregister_benchmark"]

for _benchmark in (Pope(), MME(), Amber()):
    register_benchmark(_benchmark)
