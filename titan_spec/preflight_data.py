"""The launcher's checks of the job's data before any worker starts: the tokenizer loads and
fits the model's vocabulary, the task (a JSONL file included) loads, and its samples fit the
lengths the job gives them. Each failure is one ValueError naming the setting to change.

A JSONL task is checked line by line (every problem); a generated task by a sample of its
problems, which finds the usual lengths, not a guaranteed maximum (the SFT data source still
refuses a longer sample when it meets one)."""

from __future__ import annotations

import random

from titan_spec.data.tokenizer import build_tokenizer, encode_prompt

SAMPLED = 256  # problems drawn from a generated task
CHECKED = 50_000  # problems of a dataset checked at most (a deterministic sample beyond)
TOO_LONG_CHARS = 64  # characters per token no tokenizer reaches: longer text is not encoded


def _longest(problems, budget: int, text, count) -> tuple[int, object, str]:
    """(length, problem, unit) of the longest count(problem) in tokens; a text(problem) far
    beyond `budget` tokens is measured in characters without encoding it (encoding a 10 MB
    line takes minutes)."""
    longest, which = 0, None
    for problem in problems:
        raw = text(problem)
        if len(raw) > budget * TOO_LONG_CHARS:
            return len(raw), problem, "characters"
        tokens = count(problem)
        if tokens > longest:
            longest, which = tokens, problem
    return longest, which, "tokens"


def _where(task, problem) -> str:
    locate = getattr(task, "locate", None)
    return f" ({locate(problem)})" if locate is not None and problem is not None else ""


def _problems(task, seed: int) -> list:
    problems = getattr(task, "problems", None)
    rng = random.Random(f"preflight:{seed}")
    if problems is None:
        return [task.sample(rng) for _ in range(SAMPLED)]
    return problems if len(problems) <= CHECKED else rng.sample(problems, CHECKED)


def check_data(cfg, model_vocab: int, max_seq_len: int) -> None:
    from titan_spec.formats.initial_load import tokenizer_spec
    from titan_spec.rl.tasks import task_from_config

    tokenizer = build_tokenizer(tokenizer_spec(cfg), cfg.task.chat_template)
    if tokenizer.vocab_size > model_vocab:
        raise ValueError(f"the tokenizer ({tokenizer_spec(cfg)}) has {tokenizer.vocab_size} "
                         f"tokens but the model's vocabulary has {model_vocab} rows; use the "
                         "model's own tokenizer (model.tokenizer) or a model.flavor that fits.")
    task = task_from_config(cfg.task)
    problems = _problems(task, cfg.job.seed)
    seq_len = cfg.training.seq_len
    prompt_tokens = {}  # id(problem) -> its prompt's tokens: the SFT check needs them again

    def prompt_len_of(problem) -> int:
        if id(problem) not in prompt_tokens:
            prompt_tokens[id(problem)] = len(encode_prompt(tokenizer, problem.prompt))
        return prompt_tokens[id(problem)]
    prompt_len, prompt_of, unit = _longest(problems, max_seq_len, lambda p: p.prompt,
                                           prompt_len_of)
    if (cfg.sft.eval_problems or cfg.rl.eval_problems) and prompt_len >= seq_len:
        raise ValueError(
            f"training.seq_len={seq_len} leaves no room to answer: the task's longest prompt "
            f"has {prompt_len} {unit}{_where(task, prompt_of)}; raise training.seq_len above "
            "it (evaluation answers within it) or shorten the prompts.")
    if cfg.rl.steps and prompt_len >= max_seq_len:
        raise ValueError(
            f"a prompt has {prompt_len} {unit}{_where(task, prompt_of)} but the model's "
            f"max_seq_len is {max_seq_len}: RL cannot generate after it. Shorten or drop it.")
    if cfg.sft.steps:
        _check_sft(task, problems, tokenizer, seq_len, prompt_len_of)


def _check_sft(task, problems, tokenizer, seq_len: int, prompt_len_of) -> None:
    unsolved = next((p for p in problems if not p.solution), None)
    if unsolved is not None:
        raise ValueError(f"SFT needs a reference solution per problem and one has none"
                         f"{_where(task, unsolved)}: add \"solution\" to the lines, or set "
                         "sft.steps=0 and start from a checkpoint.")
    sft_len, sft_of, unit = _longest(
        problems, seq_len, lambda p: p.prompt + p.solution,
        lambda p: prompt_len_of(p) + len(tokenizer.encode(p.solution)) + 1)
    if sft_len > seq_len + 1:
        raise ValueError(
            f"training.seq_len={seq_len} is shorter than the task's SFT samples: one has "
            f"{sft_len} {unit}{_where(task, sft_of)}; raise training.seq_len to at least "
            f"{sft_len - 1} or make the task smaller.")
