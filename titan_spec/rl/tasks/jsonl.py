"""A JSONL dataset of verifiable problems, e.g. GSM8K or DAPO-Math exported one object per line:

    {"prompt": "...", "answer": "42"}                 (RL)
    {"prompt": "...", "answer": "42", "solution": "..."}  (also usable for SFT)

Answers are compared after extraction from the completion: the last \\boxed{...}, else the text
after the last '####' (GSM8K) or '#', else the last number; numbers compare by value ("1,000",
"1000.0" and "1000" are equal). Bad lines name file and line; `on_bad_line` decides whether
they stop the run or are skipped and counted."""

from __future__ import annotations

import json
import logging
import random
import re
from fractions import Fraction
from pathlib import Path

from .base import Problem

log = logging.getLogger("titan_spec")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # unbalanced: no answer


def extract_answer(completion: str) -> str | None:
    boxed = _last_boxed(completion)
    if boxed is not None:
        return boxed
    for mark in ("####", "#"):
        if mark in completion:
            tail = completion.rsplit(mark, 1)[1].strip()
            return tail or None
    numbers = _NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> Fraction | None:
    cleaned = text.strip().strip("$").replace(",", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str, reference: str) -> bool:
    left, right = _as_number(predicted), _as_number(reference)
    if left is not None and right is not None:
        return left == right
    return predicted.strip() == reference.strip()


def _parse_line(raw: str) -> Problem:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    missing = [key for key in ("prompt", "answer") if key not in record]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    prompt, answer = record["prompt"], record["answer"]
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("'prompt' must be a non-empty string")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError("'answer' must be a string or a number")
    solution = record.get("solution", "")
    if not isinstance(solution, str):
        raise ValueError("'solution' must be a string")
    return Problem(prompt=prompt, solution=solution, answer=str(answer))


def load_jsonl(path: str, on_bad_line: str = "error") -> tuple[list[Problem], list[str]]:
    """-> (problems, bad-line reports). on_bad_line: 'error' raises at the first bad line,
    'skip' skips and reports them."""
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"task.jsonl.on_bad_line={on_bad_line!r}: use 'error' or 'skip'.")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"task.jsonl.path={path!r} is not a file; point it at a JSONL dataset.")
    problems, bad = [], []
    with file.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                problems.append(_parse_line(raw))
            except ValueError as err:
                report = f"{file}:{number}: {err}"
                if on_bad_line == "error":
                    raise ValueError(f"{report}; fix the line or set "
                                     "task.jsonl.on_bad_line=skip.") from None
                bad.append(report)
    if not problems:
        raise ValueError(f"{file} has no usable problems ({len(bad)} bad lines).")
    return problems, bad


class JsonlTask:
    def __init__(self, path: str, on_bad_line: str = "error"):
        self.problems, self.bad_lines = load_jsonl(path, on_bad_line)
        if self.bad_lines:
            log.warning("%s: skipped %d bad line(s), first: %s", path, len(self.bad_lines),
                        self.bad_lines[0])

    @classmethod
    def from_config(cls, cfg) -> "JsonlTask":
        """cfg: [task.jsonl] (the config validates that path is set)."""
        return cls(cfg.path, cfg.on_bad_line)

    def sample(self, rng: random.Random) -> Problem:
        return self.problems[rng.randrange(len(self.problems))]

    def reward(self, problem: Problem, completion: str) -> float:
        predicted = extract_answer(completion)
        return 1.0 if predicted is not None and answers_match(predicted, problem.answer) else 0.0
