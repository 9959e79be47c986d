"""MME (Fu et al., 2023): yes/no questions, two per image, over 14 perception and cognition sub-tasks.

Questions: the user's ``MME_Benchmark_release_version`` folder (also its images) or LLaVA's
``llava_mme.jsonl`` (`questions.load_mme`); MME is not redistributable, so nothing ships. The AvisC
scripts ask only a question's first line under the paper protocol. Answers are matched to questions
as MME's scorer matches them (by category, image and question text); scoring: MME's
``calculation.py`` (`..score_mme`), in MME points.
"""

from __future__ import annotations

from .. import questions as q
from .. import score_mme
from .base import Benchmark, ScoreOptions


class MME(Benchmark):
    name = "mme"
    title = "MME"
    unit = score_mme.UNIT
    question_hint = "the MME_Benchmark_release_version folder (or LLaVA's llava_mme.jsonl)"
    images_in_question_folder = True
    first_line_under = ("paper",)

    def load(self, source: str) -> list:
        return q.load_mme(source)

    def check_shape(self, questions: list, source: str) -> None:
        q.check_mme_shape(questions, source)

    def answered(self, records: list, questions: list) -> set:
        return score_mme.answered_questions(records, questions)

    def score(self, records: list, options: ScoreOptions, rule: str) -> dict:
        return score_mme.score_mme(records, options.question_file, rule)

    def report(self, result: dict, rule: str) -> str:
        return score_mme.report(result)

    def headline(self, result: dict) -> dict:
        return score_mme.headline(result)
