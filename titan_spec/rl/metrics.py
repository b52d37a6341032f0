"""The one RL step record, for the sync and the async driver alike.

A record is: the learner's training metrics (`loss`, `grad_norm`, ...), the rollout figures of
the step (`RolloutStats`: what every generator of the step did, summed over them), the batch
figures (logprob mismatch, advantages; under async also lag and importance weights, reduced
over the learner's data-parallel ranks), and the step's named timer spans (`time_<span>_s`,
components/metrics.py StepTimer), which never overlap and add up to at most `step_time_s`.
Under async RL the rollout ranks' own times are `rollout_side_*_s`: they are not part of the
learner's step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from titan_spec.comm import dp_max, dp_sum
from titan_spec.rollout.context_buckets import rates_by_context

from .rollout_batch import RolloutBatch, logprob_mismatch
from .rollout_is import mismatch_record

# Per-step count lists summed over generators, in the order the reductions pack them.
_COUNT_LISTS = ("accepted_per_position", "drafted_per_position", "accepted_per_context",
                "drafted_per_context")


@dataclass
class RolloutStats:
    """Totals over every generator of one step (dp ranks in sync, rollout replicas in async)."""

    samples: float
    reward_sum: float
    correct: float
    length_sum: float
    tokens: float
    sequence_steps: float
    accepted_per_position: list
    drafted_per_position: list
    accepted_per_context: list  # by context-length bucket (rollout/context_buckets.py)
    drafted_per_context: list
    time_generate_s: float  # the slowest generator's
    kv_cache_bytes: int
    # Iterations timed against adaptive k's k = 0 probes: plain decoding's time for their
    # tokens, and their own time (rollout/engine_stats.py).
    plain_equivalent_s: float = 0.0
    compared_s: float = 0.0
    rollout_side: dict = field(default_factory=dict)  # async: the rollout ranks' own figures

    @classmethod
    def from_engine(cls, engine_stats: dict, rewards: torch.Tensor, lengths: list[int],
                    time_generate_s: float, dims, device) -> "RolloutStats":
        """This rank's generation in a sync step, summed over the data-parallel ranks."""
        lists = {key: engine_stats[key] for key in _COUNT_LISTS}
        sums = dp_sum(dims, [len(lengths), float(rewards.sum()), float((rewards >= 1).sum()),
                             sum(lengths), engine_stats["tokens"], engine_stats["sequence_steps"]]
                      + [x for values in lists.values() for x in values]
                      + [engine_stats["plain_equivalent_s"], engine_stats["compared_s"]], device)
        (slowest,) = dp_max(dims, [time_generate_s], device)
        summed, offset = {}, 6
        for key, values in lists.items():
            summed[key] = sums[offset:offset + len(values)]
            offset += len(values)
        return cls(*sums[:6], **summed, time_generate_s=slowest,
                   kv_cache_bytes=engine_stats["kv_cache_bytes"],
                   plain_equivalent_s=sums[-2], compared_s=sums[-1])

    @classmethod
    def from_messages(cls, messages) -> "RolloutStats":
        """Every rollout replica's batch of an async step (each learner rank holds them all)."""
        stats = [m.stats for m in messages]
        rewards = torch.tensor([r for m in messages for r in m.rewards])
        return cls(
            samples=len(rewards), reward_sum=float(rewards.sum()),
            correct=float((rewards >= 1).sum()),
            length_sum=sum(len(ids) for m in messages for ids in m.token_ids),
            tokens=sum(s["tokens"] for s in stats),
            sequence_steps=sum(s["sequence_steps"] for s in stats),
            **{key: [sum(values) for values in zip(*(s[key] for s in stats), strict=True)]
               for key in _COUNT_LISTS},
            time_generate_s=max(s["time_generate_s"] for s in stats),
            kv_cache_bytes=stats[0]["kv_cache_bytes"],
            plain_equivalent_s=sum(s["plain_equivalent_s"] for s in stats),
            compared_s=sum(s["compared_s"] for s in stats),
            rollout_side={
                "rollout_side_generate_s": max(s["time_generate_s"] for s in stats),
                # Idle (and receiving) before the batch: waiting for the learner's weights.
                "rollout_side_waiting_for_weights_s": max(s["time_waiting_for_weights_s"]
                                                          for s in stats),
                "rollout_side_inflight_weights_s": max(s["time_inflight_weights_s"]
                                                       for s in stats),
                "queue_depth": max(s.get("queue_depth", 0) for s in stats),
                "weight_updates_in_batch": max(s["weight_updates_in_batch"] for s in stats),
                # Weights a rollout rank took since its previous batch (its slice, under the
                # sharded sync), the largest over replica leaders.
                "rollout_side_weight_bytes_received": max(s.get("weight_bytes_received", 0)
                                                          for s in stats),
            })

    def record(self, drafters, warn: bool) -> dict:
        rates, collapsed = drafters.acceptance(self.accepted_per_position,
                                               self.drafted_per_position, warn)
        return {
            "reward_mean": self.reward_sum / self.samples, "accuracy": self.correct / self.samples,
            "response_len_mean": self.length_sum / self.samples,
            "rollout_tokens_per_s": self.tokens / max(self.time_generate_s, 1e-9),
            "acceptance_length": self.tokens / max(self.sequence_steps, 1),
            "acceptance_rate_per_position": rates, "drafter_collapsed": collapsed,
            "acceptance_rate_by_context": rates_by_context(self.accepted_per_context,
                                                           self.drafted_per_context),
            "drafter_kind": drafters.cfg.kind,
            "kv_cache_bytes": self.kv_cache_bytes, **self.rollout_side,
            # Measured against plain decoding by adaptive k's k = 0 probes (None without them).
            "rollout_speedup_vs_plain": self.plain_equivalent_s / self.compared_s
            if self.compared_s > 0 else None,
            "rollout_plain_equivalent_s": self.plain_equivalent_s,
            "rollout_compared_s": self.compared_s,
        }


def batch_record(batch: RolloutBatch, samples: float, dims, device, lags=None,
                 max_policy_lag: int = 0) -> dict:
    """This rank's share of the training batch, reduced over the data-parallel ranks. With
    `lags` (async): the mismatch counts on-policy samples only, plus lag figures. The mismatch
    percentiles, KL(behaviour || learner) and the importance weights' figures: rollout_is.py."""
    mask = batch.mask
    if lags is not None:
        mask = (lags == 0).to(mask.device).unsqueeze(1) * mask
    gap_sum, gap_max, gap_n = logprob_mismatch(batch.behaviour_logprobs, batch.old_logprobs, mask)
    sums = [float(gap_sum), float(gap_n), float((batch.advantages != 0).sum())]
    maxima = [float(gap_max)]
    if lags is not None:
        sums += [float(lags.sum()), lags.numel(), float((lags > max_policy_lag).sum())]
        maxima += [float(lags.max())]
    sums, maxima = dp_sum(dims, sums, device), dp_max(dims, maxima, device)
    # mismatch_tokens: what the mismatch figures cover (0 when every sample is lagged)
    record = {"logprob_mismatch_max": maxima[0], "logprob_mismatch_mean": sums[0] / max(sums[1], 1),
              "mismatch_tokens": int(sums[1]),
              "nonzero_advantage_fraction": sums[2] / samples,
              "policy_version": int(batch.policy_versions.max()),
              "drafter_version": int(batch.drafter_versions.max())}
    if lags is not None:
        lag_sum, lag_n, dropped = sums[3:]
        record.update(policy_lag_mean=lag_sum / max(lag_n, 1), policy_lag_max=int(maxima[1]),
                      # Samples older than max_policy_lag, left out of the loss (drop).
                      dropped_fraction=dropped / max(lag_n, 1))
    record.update(mismatch_record(batch.old_logprobs, batch.behaviour_logprobs, mask,
                                  batch.is_weights, batch.is_cut, batch.mask, dims, device))
    return record
