"""A JSONL dataset of verifiable problems, e.g. GSM8K or DAPO-Math exported one object per line:

    {"prompt": "...", "answer": "42"}                 (RL)
    {"prompt": "...", "answer": "42", "solution": "..."}  (also usable for SFT)

Answers are compared after extraction from the completion: the last \\boxed{...}, else the text
after the last '####' (GSM8K) or '#', else the last number; numbers compare by value ("1,000",
"1000.0" and "1000" are equal). Bad lines name file and line; `on_bad_line` decides whether
they stop the run or are skipped and counted."""

from __future__ import annotations

import hashlib
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


def _decoded(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})") \
            from None


def load_jsonl(path: str, on_bad_line: str = "error"
               ) -> tuple[list[Problem], list[int], list[str]]:
    """-> (problems, the line number of each, bad-line reports). on_bad_line: 'error' raises
    at the first bad line, 'skip' skips and reports them."""
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"task.jsonl.on_bad_line={on_bad_line!r}: use 'error' or 'skip'.")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"task.jsonl.path={path!r} is not a file; point it at a JSONL dataset.")
    problems, numbers, bad = [], [], []
    with file.open("rb") as handle:  # bytes: one bad line must not stop the whole file
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                problems.append(_parse_line(_decoded(raw)))
                numbers.append(number)
            except ValueError as err:
                report = f"{file}:{number}: {err}"
                if on_bad_line == "error":
                    raise ValueError(f"{report}; fix the line or set "
                                     "task.jsonl.on_bad_line=skip.") from None
                bad.append(report)
    if not problems:
        raise ValueError(f"{file} has no usable problems ({len(bad)} bad lines).")
    return problems, numbers, bad


def held_out(problem: Problem, fraction: float) -> bool:
    """A problem's place in the split, from its prompt alone: the same on every rank and run,
    whatever the order or the other lines of the file."""
    digest = hashlib.sha256(problem.prompt.encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


class ProblemSet:
    """Problems drawn uniformly, scored by the dataset's answer check."""

    def __init__(self, problems: list[Problem], lines: dict[int, str]):
        self.problems, self._lines = problems, lines

    def sample(self, rng: random.Random) -> Problem:
        return self.problems[rng.randrange(len(self.problems))]

    def reward(self, problem: Problem, completion: str) -> float:
        predicted = extract_answer(completion)
        return 1.0 if predicted is not None and answers_match(predicted, problem.answer) else 0.0

    def locate(self, problem: Problem) -> str:
        """'file:line' of a problem of this set."""
        return self._lines.get(id(problem), "?")


class JsonlTask(ProblemSet):
    """Training draws from the lines outside the held-out split, evaluation (heldout()) from
    the lines inside it."""

    def __init__(self, path: str, on_bad_line: str = "error", heldout_fraction: float = 0.0):
        problems, numbers, self.bad_lines = load_jsonl(path, on_bad_line)
        if self.bad_lines:
            log.warning("%s: skipped %d bad line(s), first: %s", path, len(self.bad_lines),
                        self.bad_lines[0])
        lines = {id(p): f"{path}:{n}" for p, n in zip(problems, numbers, strict=True)}
        held = [p for p in problems if held_out(p, heldout_fraction)]
        train = [p for p in problems if not held_out(p, heldout_fraction)]
        if not train:
            raise ValueError(f"task.jsonl.heldout_fraction={heldout_fraction} holds out every "
                             f"one of the {len(problems)} problems of {path}; lower it.")
        super().__init__(train, lines)
        self._heldout = ProblemSet(held, lines) if heldout_fraction > 0 else None

    @classmethod
    def from_config(cls, cfg) -> "JsonlTask":
        """cfg: [task.jsonl] (the config validates that path is set)."""
        return cls(cfg.path, cfg.on_bad_line, cfg.heldout_fraction)

    def heldout(self) -> ProblemSet:
        """The evaluation problems; the training ones when heldout_fraction = 0."""
        if self._heldout is None:
            return self
        if not self._heldout.problems:
            raise ValueError("task.jsonl.heldout_fraction leaves no problem for evaluation in "
                             "this file; raise it, or set sft/rl.eval_problems=0.")
        return self._heldout
