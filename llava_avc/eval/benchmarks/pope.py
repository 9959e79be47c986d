"""POPE (Li et al., 2023): yes/no questions about objects, three samplings (random, popular, adversarial).

Questions: the POPE authors' files unchanged (`questions.load_pope`); nine sets ship inside the package
(``coco_pope_random`` is the default). Scoring: upstream ``llava/eval/eval_pope.py`` (`..score_pope`),
reported in percent per category.
"""

from __future__ import annotations

from .. import questions as q
from .. import score_pope
from .base import Benchmark, ScoreOptions


class Pope(Benchmark):
    name = "pope"
    title = "POPE"
    unit = score_pope.UNIT
    question_hint = "a packaged POPE set such as coco_pope_random, or your POPE question file"
    default_questions = "coco_pope_random"
    reference_by_dataset = True

    def load(self, source: str) -> list:
        return q.load_pope(source)

    def check_shape(self, questions: list, source: str) -> None:
        q.check_pope_shape(questions, source)

    def score(self, records: list, options: ScoreOptions, rule: str) -> dict:
        return score_pope.score_pope(records, options.question_file, options.annotation_dir, rule)

    def report(self, result: dict, rule: str) -> str:
        return score_pope.report(result, rule)

    def public(self, result: dict) -> dict:
        return {"unit": self.unit, **score_pope.public(result)}

    def headline(self, result: dict) -> dict:
        return score_pope.headline(result)
