"""RL data, the same on learner and rollout ranks: the step's prompts (each repeated group_size
times), its sampling settings and seeds, the rewards of finished samples, and the training
batch built from them. Everything is a function of (job.seed, step, shard), so a run is the
same on any layout and after a resume."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from titan_spec.data.tokenizer import encode_prompt
from titan_spec.rollout.sampling import SamplingParams

from .advantages import group_advantages, informative_groups
from .rollout_batch import RolloutBatch, assemble


@dataclass
class Prompts:
    """One generator's share of a step: whole groups, adjacent."""

    token_ids: list[list[int]]
    problems: list  # the task problem of each sample (for its reward)
    group_ids: list[int]  # the step-wide index of each sample's prompt


class RLData:
    def __init__(self, task, tokenizer, rl_cfg, rollout_cfg, seed: int, device):
        self.task, self.tokenizer = task, tokenizer
        self.rl, self.rollout, self.seed, self.device = rl_cfg, rollout_cfg, seed, device

    def prompts(self, step: int, shard: int, shards: int) -> Prompts:
        """Shard `shard` of `shards` of the step's prompts, each repeated group_size times."""
        rng = random.Random(f"rl:{self.seed}:{step}")
        problems = [self.task.sample(rng) for _ in range(self.rl.prompts_per_step)]
        per_shard = self.rl.prompts_per_step // shards
        first = shard * per_shard
        mine = problems[first:first + per_shard]
        samples = [(first + i, problem) for i, problem in enumerate(mine)
                   for _ in range(self.rl.group_size)]
        return Prompts([encode_prompt(self.tokenizer, problem.prompt) for _, problem in samples],
                       [problem for _, problem in samples], [gid for gid, _ in samples])

    def sampling(self, step: int, shard: int) -> SamplingParams:
        r = self.rollout
        # Tensor-parallel peers share a shard, hence the seed: they must decode in lockstep.
        # The large odd multipliers keep (seed, step, shard) triples from colliding.
        seed = (self.seed * 1_000_003 + step) * 1009 + shard
        return SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                              max_new_tokens=r.max_new_tokens,
                              stop_token_ids=self.tokenizer.stop_ids, seed=seed)

    def rewards(self, problems, completions) -> list[float]:
        return [self.task.reward(problem, self.tokenizer.decode(c.token_ids))
                for problem, c in zip(problems, completions, strict=True)]

    def to_batch(self, prompts: list[list[int]], completions, rewards: list,
                 policy_versions: list, drafter_versions: list) -> RolloutBatch:
        """Training tensors of a rank's samples (whole groups, adjacent), sync or async."""
        inputs, targets, mask, behaviour = assemble(prompts, completions,
                                                    self.tokenizer.pad_id, self.device)
        rewards = torch.tensor(rewards)
        advantages = group_advantages(rewards, self.rl.group_size, self.rl.normalize_std)
        if self.rl.dynamic_sampling:  # all-equal groups carry no gradient: leave them out
            mask = mask * informative_groups(rewards, self.rl.group_size).to(mask).unsqueeze(1)
        return RolloutBatch(inputs, targets, mask, behaviour, rewards.to(self.device),
                            advantages.to(self.device), torch.tensor(policy_versions),
                            torch.tensor(drafter_versions))
