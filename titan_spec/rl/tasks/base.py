from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Problem:
    prompt: str  # what the policy sees
    solution: str  # a reference completion (worked steps + final answer), for SFT
    answer: str  # the exact final answer the checker compares against


class Task(Protocol):
    def sample(self, rng: random.Random) -> Problem: ...

    def reward(self, problem: Problem, completion: str) -> float: ...

    def heldout(self) -> "Task":
        """The problems evaluation draws from (disjoint from training where the task can)."""
        ...


class NumberListTask:
    """Shared set-up of tasks over a random list of numbers (countdown, sorting)."""

    name = "numbers"
    fewest_items = 1  # the smallest list the task makes sense for

    def __init__(self, min_items: int, max_items: int, max_number: int):
        if not self.fewest_items <= min_items <= max_items:
            raise ValueError(f"{self.name} needs {self.fewest_items} <= min_items ({min_items}) "
                             f"<= max_items ({max_items}).")
        self.min_items, self.max_items, self.max_number = min_items, max_items, max_number

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.min_items, cfg.max_items)

    def heldout(self):
        """Generated problems: evaluation draws them from its own random stream."""
        return self

    def numbers(self, rng: random.Random, low: int) -> list[int]:
        count = rng.randint(self.min_items, self.max_items)
        return [rng.randint(low, self.max_number) for _ in range(count)]
