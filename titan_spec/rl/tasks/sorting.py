"""Sorting: write the given numbers in ascending order.

    prompt:   "sort 12,3,7:"
    solution: "#3,7,12"
"""

from __future__ import annotations

import random

from .base import Problem

ANSWER_MARK = "#"


class SortingTask:
    def __init__(self, min_items: int = 3, max_items: int = 4, max_number: int = 99):
        if not 1 <= min_items <= max_items:
            raise ValueError(f"sorting needs 1 <= min_items ({min_items}) <= max_items "
                             f"({max_items}).")
        self.min_items, self.max_items, self.max_number = min_items, max_items, max_number

    @classmethod
    def from_config(cls, cfg) -> "SortingTask":
        return cls(cfg.min_items, cfg.max_items)

    def sample(self, rng: random.Random) -> Problem:
        numbers = [rng.randint(0, self.max_number)
                   for _ in range(rng.randint(self.min_items, self.max_items))]
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
