"""Multi-digit addition written out column by column, least significant digit first.

    prompt:   "473+58="
    solution: "3+8+0=11;7+5+1=13;4+0+1=5;#531"

Each column step is checkable, so a model can learn the algorithm rather than memorise sums,
and the final answer after '#' is verified exactly."""

from __future__ import annotations

import random

from .base import Problem

ANSWER_MARK = "#"


class ArithmeticTask:
    def __init__(self, min_digits: int = 1, max_digits: int = 3):
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits ({min_digits}) <= max_digits ({max_digits}).")
        self.min_digits, self.max_digits = min_digits, max_digits

    @classmethod
    def from_config(cls, cfg) -> "ArithmeticTask":
        return cls(cfg.min_digits, cfg.max_digits)

    def heldout(self) -> "ArithmeticTask":
        """Generated problems: evaluation draws them from its own random stream."""
        return self

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(low, 10**digits - 1)

    def sample(self, rng: random.Random) -> Problem:
        a, b = self._operand(rng), self._operand(rng)
        return Problem(prompt=f"{a}+{b}=", solution=self.worked_solution(a, b), answer=str(a + b))

    @staticmethod
    def worked_solution(a: int, b: int) -> str:
        da, db = str(a)[::-1], str(b)[::-1]
        steps, carry = [], 0
        for col in range(max(len(da), len(db))):
            x = int(da[col]) if col < len(da) else 0
            y = int(db[col]) if col < len(db) else 0
            total = x + y + carry
            steps.append(f"{x}+{y}+{carry}={total}")
            carry = total // 10
        return ";".join(steps) + f";{ANSWER_MARK}{a + b}"

    @staticmethod
    def extract_answer(completion: str) -> str | None:
        if ANSWER_MARK not in completion:
            return None
        answer = completion.rsplit(ANSWER_MARK, 1)[1].strip()
        return answer if answer.isdigit() else None

    def reward(self, problem: Problem, completion: str) -> float:
        return 1.0 if self.extract_answer(completion) == problem.answer else 0.0
