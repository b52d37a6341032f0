"""Sorting: write the given numbers in ascending order.

    prompt:   "sort 12,3,7:"
    solution: "#3,7,12"
"""

from __future__ import annotations

import random

from .base import NumberListTask, Problem

ANSWER_MARK = "#"


class SortingTask(NumberListTask):
    name = "sorting"

    def __init__(self, min_items: int = 3, max_items: int = 4, max_number: int = 99):
        super().__init__(min_items, max_items, max_number)

    def sample(self, rng: random.Random) -> Problem:
        numbers = self.numbers(rng, low=0)
        answer = ",".join(map(str, sorted(numbers)))
        return Problem(prompt="sort " + ",".join(map(str, numbers)) + ":",
                       solution=ANSWER_MARK + answer, answer=answer)

    @staticmethod
    def extract_answer(completion: str) -> str | None:
        if ANSWER_MARK not in completion:
            return None
        return completion.rsplit(ANSWER_MARK, 1)[1].strip().replace(" ", "") or None

    def reward(self, problem: Problem, completion: str) -> float:
        return 1.0 if self.extract_answer(completion) == problem.answer else 0.0
