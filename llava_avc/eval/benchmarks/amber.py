"""AMBER (Wang et al., 2023): generative captions ("Describe this image.") and discriminative yes/no
questions about existence, attributes and relations.

Questions: AMBER's ``query_*.json`` unchanged (`questions.load_amber`); the queries and the annotations
ship inside the package (``query_all`` is the default). Scoring: CHAIR, Cover, Hal, Cog and the
discriminative metrics as AMBER's evaluator computes them (`..score_amber`), in percent.
"""

from __future__ import annotations

from .. import questions as q
from .. import score_amber
from .base import Benchmark, ScoreOptions


class Amber(Benchmark):
    name = "amber"
    title = "AMBER"
    unit = score_amber.UNIT
    question_hint = "a packaged AMBER query set such as query_all, or your query_*.json"
    default_questions = "query_all"

    def load(self, source: str) -> list:
        return q.load_amber(source)

    def check_shape(self, questions: list, source: str) -> None:
        q.check_amber_shape(questions, source)

    def score(self, records: list, options: ScoreOptions, rule: str) -> dict:
        references = score_amber.load_references(options.annotation_dir)
        return score_amber.score_amber(records, references, rule, score_amber.noun_matcher(options.amber_nouns))

    def report(self, result: dict, rule: str) -> str:
        return score_amber.report(result)

    def headline(self, result: dict) -> dict:
        return score_amber.headline(result)
