"""Greedy held-out accuracy: problems from a stream disjoint from the training data, each
data-parallel rank solving its share."""

from __future__ import annotations

import random

import torch

from titan_spec.comm import all_reduce_dp
from titan_spec.data.tokenizer import encode_prompt
from titan_spec.rollout.greedy import greedy_decode


def evaluate(learner, task, tokenizer, count: int, seed: int, seq_len: int, step: int,
             group=None) -> dict:
    """group: the learner's process group (None: every rank of the job learns)."""
    rng, heldout = random.Random(f"eval:{seed}"), task.heldout()
    problems = [heldout.sample(rng) for _ in range(count)]
    dims = learner.dims
    mine = problems[dims.dp_rank()::dims.dp]  # strided: shares differ by at most one
    prompts = [encode_prompt(tokenizer, problem.prompt) for problem in mine]
    learner.model.eval()
    max_new = seq_len - max(map(len, prompts))
    outputs = greedy_decode(learner.model, prompts, max_new, tokenizer.stop_ids, tokenizer.pad_id,
                            learner.device, tokenizer.vocab_size, dims.tp, group=group)
    correct = sum(heldout.reward(problem, tokenizer.decode(ids))
                  for problem, ids in zip(mine, outputs, strict=True))
    total = all_reduce_dp(dims, torch.tensor([correct, len(mine)], dtype=torch.float64,
                                             device=learner.device))
    return {"step": step, "phase": "eval", "accuracy": float(total[0] / total[1]),
            "num_problems": int(total[1])}
