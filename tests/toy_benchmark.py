"""A benchmark defined outside the package, for the registry's proof (tests/test_benchmark_registry.py).

"colors": a JSON-lines file of {"id", "image", "question", "color"}; an answer is right when it names the
question's colour; the score is the percent of right answers, per colour and overall.
"""

from __future__ import annotations

import json
from pathlib import Path

from llava_avc.eval.benchmarks import Benchmark, ScoreOptions
from llava_avc.eval.questions import Question

PREFIX = "Answer in one word."


class Colors(Benchmark):
    name = "colors"
    title = "Colors"
    unit = "percent"
    question_hint = "a colors.jsonl file"
    first_line_under = ("paper",)

    def load(self, source: str) -> list:
        rows = [json.loads(line) for line in Path(source).read_text().splitlines() if line.strip()]
        return [Question(row["id"], row["image"], f"{row['question']}\n{PREFIX}", yes_no=False, label=row["color"],
                         category=row["color"], source=f"{source}, line {number}")
                for number, row in enumerate(rows, start=1)]

    def check_shape(self, questions: list, source: str) -> None:
        if any(question.label is None for question in questions):
            raise ValueError(f"{source}: every colors question needs a color.")

    def score(self, records: list, options: ScoreOptions, rule: str) -> dict:
        right = {}
        for record in records:
            color = record["metadata"]["label"]
            right.setdefault(color, []).append(color in record["text"].lower())
        every = [hit for hits in right.values() for hit in hits]
        return {"overall": 100 * sum(every) / len(every),
                **{color: 100 * sum(hits) / len(hits) for color, hits in sorted(right.items())}}

    def report(self, result: dict, rule: str) -> str:
        return "\n".join([f"Colors ({self.unit})"] + [f"{key}: {value:.2f}" for key, value in result.items()])

    def headline(self, result: dict) -> dict:
        return dict(result)


BENCHMARK = Colors()
