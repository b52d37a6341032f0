"""Registry of verifiable tasks: each generates problems and scores completions exactly."""

from __future__ import annotations

import difflib

from .arithmetic import ArithmeticTask
from .base import Problem, Task
from .countdown import CountdownTask
from .jsonl import JsonlTask
from .sorting import SortingTask

TASKS: dict[str, type] = {"arithmetic": ArithmeticTask, "countdown": CountdownTask,
                          "sorting": SortingTask, "jsonl": JsonlTask}


def _lookup(name: str) -> type:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown task '{name}'; registered: {', '.join(TASKS)}.{hint}")
    return TASKS[name]


def build_task(name: str, **kwargs) -> Task:
    return _lookup(name)(**kwargs)


def task_from_config(task_cfg) -> Task:
    """Build from the [task] table: the named task reads its own sub-table, [task.<name>]."""
    return _lookup(task_cfg.name).from_config(getattr(task_cfg, task_cfg.name))


__all__ = ["Problem", "Task", "TASKS", "build_task", "task_from_config"]
