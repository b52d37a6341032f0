"""Synthetic SFT batches, deterministic in (seed, step): every rank builds the same GLOBAL batch
and keeps its data-parallel slice, so a run is identical on 1, 2 or 4 ranks and the data
position to resume from is just the step."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .tokenizer import encode_prompt


@dataclass
class Batch:
    inputs: torch.Tensor  # [B, L] token ids
    targets: torch.Tensor  # [B, L] next-token targets
    mask: torch.Tensor  # [B, L] 1.0 where the target is a completion token

    def slice(self, start: int, stop: int) -> "Batch":
        return Batch(self.inputs[start:stop], self.targets[start:stop], self.mask[start:stop])


def shift_and_mask(sequences: list[list[int]], prompt_lens: list[int], pad_id: int):
    """Prompt + completion token lists -> inputs, targets, mask, each [N, L] with L = longest
    sequence - 1: the model reads tokens[:-1], is scored on tokens[1:], and the mask is 1 where
    the target is a completion token. SFT batches and RL rollout batches are both built here."""
    width = max(len(ids) for ids in sequences) - 1
    inputs = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width))
    for row, (ids, prompt_len) in enumerate(zip(sequences, prompt_lens, strict=True)):
        tokens = torch.tensor(ids)
        inputs[row, : len(ids) - 1] = tokens[:-1]
        targets[row, : len(ids) - 1] = tokens[1:]
        mask[row, prompt_len - 1 : len(ids) - 1] = 1.0
    return inputs, targets, mask


class SFTDataSource:
    def __init__(self, task, tokenizer, global_batch_size: int, seq_len: int, seed: int):
        self.task, self.tokenizer = task, tokenizer
        self.global_batch_size, self.seq_len, self.seed = global_batch_size, seq_len, seed

    def _encode(self, problem) -> tuple[list[int], int]:
        tok = self.tokenizer
        if not problem.solution:
            raise ValueError("SFT needs a reference solution per problem; this task's problems "
                             "have none (jsonl lines without \"solution\"): add it, or set "
                             "sft.steps=0 and start from a checkpoint.")
        prompt = encode_prompt(tok, problem.prompt)
        ids = prompt + tok.encode(problem.solution) + [tok.eos_id]
        if len(ids) > self.seq_len + 1:
            raise ValueError(
                f"an SFT sample has {len(ids)} tokens but training.seq_len={self.seq_len}; raise "
                "training.seq_len or make the task smaller (e.g. task.arithmetic.max_digits)."
            )
        return ids, len(prompt)

    def global_batch(self, step: int) -> Batch:
        rng = random.Random(f"sft:{self.seed}:{step}")
        samples = [self._encode(self.task.sample(rng)) for _ in range(self.global_batch_size)]
        return Batch(*shift_and_mask([ids for ids, _ in samples], [n for _, n in samples],
                                     self.tokenizer.pad_id))
