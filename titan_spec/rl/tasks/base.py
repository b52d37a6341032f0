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
