"""Countdown: reach a target with some of the given numbers and + - *.

    prompt:   "3,7,9>30:"
    solution: "7*3=21;21+9=30;#(7*3)+9"

The checker parses the expression after '#' with a whitelist (numbers, + - *, parentheses),
checks each given number is used at most once, and evaluates it exactly."""

from __future__ import annotations

import ast
import random
from collections import Counter

from .base import NumberListTask, Problem

ANSWER_MARK = "#"
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def _evaluate(node, used: list[int]) -> int:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, used), _evaluate(node.right, used))
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return node.value
    raise ValueError("not a + - * expression over integers")


class CountdownTask(NumberListTask):
    name, fewest_items = "countdown", 2

    def __init__(self, min_items: int = 3, max_items: int = 4, max_number: int = 12):
        super().__init__(min_items, max_items, max_number)

    def sample(self, rng: random.Random) -> Problem:
        numbers = self.numbers(rng, low=1)
        order = rng.sample(numbers, len(numbers))
        value, expr, steps = order[0], str(order[0]), []
        for number in order[1:]:
            op = rng.choice("+-*" if value >= number else "+*")
            new_value = {"+": value + number, "-": value - number, "*": value * number}[op]
            steps.append(f"{value}{op}{number}={new_value}")
            expr = f"({expr}){op}{number}" if steps[:-1] else f"{expr}{op}{number}"
            value = new_value
        prompt = ",".join(map(str, numbers)) + f">{value}:"
        return Problem(prompt=prompt, solution=";".join(steps) + f";{ANSWER_MARK}{expr}",
                       answer=str(value))

    @staticmethod
    def extract_answer(completion: str) -> str | None:
        if ANSWER_MARK not in completion:
            return None
        return completion.rsplit(ANSWER_MARK, 1)[1].strip() or None

    def reward(self, problem: Problem, completion: str) -> float:
        expression = self.extract_answer(completion)
        if expression is None or len(expression) > 64:
            return 0.0
        try:
            used: list[int] = []
            value = _evaluate(ast.parse(expression, mode="eval").body, used)
        except (SyntaxError, ValueError, RecursionError):
            return 0.0
        given = Counter(int(n) for n in problem.prompt.split(">")[0].split(","))
        if Counter(used) - given:  # a number used more often than given
            return 0.0
        return 1.0 if str(value) == problem.answer else 0.0
