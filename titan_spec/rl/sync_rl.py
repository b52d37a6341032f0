"""Synchronous (colocated) RL: the learner is the verifier of its own speculative rollouts.

One step, on every rank: unshard the learner once and lend its hook-free view to the rollout
engine; generate this data-parallel rank's prompts x group_size samples with speculation (the
drafter proposes, the view verifies, rejection sampling keeps the distribution exact); score
the rollout tokens with the same view (the drafter adapts on that forward's detached logits
and hidden states); reshard; one clipped-surrogate update per minibatch on group-relative
advantages, normalised by the global number of completion tokens."""

from __future__ import annotations

from titan_spec.comm import all_reduce_dp
from titan_spec.components.metrics import StepTimer, memory_record

from .metrics import RolloutStats, batch_record
from .rollout_is import is_weights

SPANS = ("gather", "rollout", "logprob", "drafter", "reshard", "train")


class SyncRL:
    def __init__(self, learner, data, drafters, state, rl_cfg, rollout_cfg, is_main: bool):
        self.learner, self.data, self.drafters, self.state = learner, data, drafters, state
        self.rl, self.rollout, self.is_main = rl_cfg, rollout_cfg, is_main

    def begin(self) -> None:
        """Nothing to set up: the rollout side is the learner itself."""

    def end(self) -> None:
        """Nothing in flight."""

    def step(self, step: int) -> dict:
        timer, learner, state = StepTimer(*SPANS), self.learner, self.state
        dims, vocab = learner.dims, learner.vocab_size
        prompts = self.data.prompts(step, dims.dp_rank(), dims.dp)
        sampling = self.data.sampling(step, dims.dp_rank())
        lr = learner.lr
        with learner.verifier(timer) as view:
            with timer.span("rollout"):
                engine = self.drafters.engine(view, prompts.token_ids, self.rollout, vocab,
                                              dims)
                completions = engine.generate(prompts.token_ids, sampling, prompts.group_ids)
            count = len(completions)
            batch = self.data.to_batch(prompts.token_ids, completions,
                                       self.data.rewards(prompts.problems, completions),
                                       [state.policy_version] * count,
                                       [state.drafter_version] * count)
            global_tokens = float(all_reduce_dp(dims, batch.mask.sum().double()))
            scored = learner.score(view, batch, sampling, self.drafters.adapter,
                                   max(global_tokens, 1.0), timer)
        state.drafter_version += self.drafters.adapter is not None
        batch.is_weights, batch.is_cut = is_weights(
            batch.old_logprobs, batch.behaviour_logprobs, batch.mask, None, self.rl.rollout_is,
            self.rl.rollout_is_cap, self.rl.rollout_is_floor, self.rl.rollout_is_cap)
        with timer.span("train"):
            trained, updates = learner.policy_step(batch, sampling, self.rl)
        state.policy_version += updates
        rollout = RolloutStats.from_engine(engine.last_stats, batch.rewards,
                                           [len(c.token_ids) for c in completions],
                                           timer.seconds["rollout"], dims, learner.device)
        return {"step": step, "phase": "rl", "lr": lr, **trained, **scored,
                **rollout.record(self.drafters, self.is_main),
                **batch_record(batch, rollout.samples, dims, learner.device),
                **timer.record(), **memory_record(learner.device)}
