"""Registry of verifiable tasks: each generates problems and scores completions exactly."""

from __future__ import annotations

import difflib

from .arithmetic import ArithmeticTask
from .base import Problem, Task

TASKS: dict[str, type] = {"arithmetic": ArithmeticTask}


def build_task(name: str, **kwargs) -> Task:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown task '{name}'; registered: {', '.join(TASKS)}.{hint}")
    return TASKS[name](**kwargs)


__all__ = ["Problem", "Task", "TASKS", "build_task"]
