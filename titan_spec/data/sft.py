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
    labels: torch.Tensor  # [B, L] next-token targets
    loss_mask: torch.Tensor  # [B, L] 1.0 where the label is a completion token

    def slice(self, start: int, stop: int) -> "Batch":
        return Batch(self.inputs[start:stop], self.labels[start:stop], self.loss_mask[start:stop])


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
                "training.seq_len or make the task smaller (e.g. task.max_digits)."
            )
        return ids, len(prompt)

    def global_batch(self, step: int) -> Batch:
        rng = random.Random(f"sft:{self.seed}:{step}")
        samples = [self._encode(self.task.sample(rng)) for _ in range(self.global_batch_size)]
        width = max(len(ids) for ids, _ in samples) - 1
        pad = self.tokenizer.pad_id
        inputs = torch.full((len(samples), width), pad, dtype=torch.long)
        labels = torch.full((len(samples), width), pad, dtype=torch.long)
        mask = torch.zeros((len(samples), width))
        for row, (ids, prompt_len) in enumerate(samples):
            seq = torch.tensor(ids)
            inputs[row, : len(ids) - 1] = seq[:-1]
            labels[row, : len(ids) - 1] = seq[1:]
            mask[row, prompt_len - 1 : len(ids) - 1] = 1.0
        return Batch(inputs, labels, mask)
