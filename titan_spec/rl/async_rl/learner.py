"""The learner side of async RL: take the step's batches from the queue, leave out what is too
old, score with the learner's own view, weight samples by pi_learner / pi_behaviour
(rl/rollout_is.py: lagged ones always, every one under rl.rollout_is = tis | mis), train, and
publish the new weights (and drafter) to the rollout mesh."""

from __future__ import annotations

from titan_spec.comm import all_reduce_dp, dp_max
from titan_spec.components.metrics import StepTimer, memory_record
from titan_spec.rollout.engine import Completion

from ..metrics import RolloutStats, batch_record
from ..rollout_is import is_weights
from .schedule import syncs_sent

SPANS = ("waiting_for_rollout", "gather", "logprob", "drafter", "reshard", "train", "weight_sync")
_FIELDS = ("prompts", "token_ids", "logprobs", "rewards")


class WeightPublisher:
    """Sends the policy (and drafter) to the rollout mesh after a step, while some later batch
    can still use that version (schedule.py)."""

    def __init__(self, policy_sync, drafter_sync, async_cfg, total_steps: int):
        self.policy_sync, self.drafter_sync = policy_sync, drafter_sync
        self.async_cfg, self.total_steps = async_cfg, total_steps
        self.start = 0  # the global step this run's schedule counts from

    def maybe_send(self, step: int, model, version: int, drafter, drafter_version: int) -> dict:
        """-> {weight_sync_bytes, seconds} (zeros when nothing was sent)."""
        done = step - self.start  # steps since the start: the sync number done + 1
        if done + 1 > syncs_sent(self.total_steps - self.start, self.async_cfg.max_policy_lag,
                                 self.async_cfg.stale_batches):
            return {"weight_sync_bytes": 0, "seconds": 0.0}
        report = self.policy_sync.send(model, version)
        sent, seconds = report.bytes, report.seconds
        if drafter is not None:
            drafted = self.drafter_sync.send(drafter, drafter_version)
            sent, seconds = sent + drafted.bytes, seconds + drafted.seconds
        return {"weight_sync_bytes": sent, "seconds": seconds}

    def wait(self) -> None:
        """The last sends are non-blocking: see them received."""
        self.policy_sync.wait()
        self.drafter_sync.wait()


class AsyncRL:
    def __init__(self, learner, data, drafters, state, queue, publisher, rl_cfg, async_cfg,
                 is_main: bool):
        self.learner, self.data, self.drafters, self.state = learner, data, drafters, state
        self.queue, self.publisher, self.is_main = queue, publisher, is_main
        self.rl, self.async_cfg = rl_cfg, async_cfg

    def begin(self) -> None:
        """The schedule counts from here; the rollout side starts from these weights."""
        self.publisher.start = self.state.step
        self._publish(self.state.step)

    def end(self) -> None:
        self.publisher.wait()

    def _publish(self, step: int) -> dict:
        return self.publisher.maybe_send(step, self.learner.model, self.state.policy_version,
                                         self.drafters.module, self.state.drafter_version)

    def step(self, step: int) -> dict:
        timer, learner, state = StepTimer(*SPANS), self.learner, self.state
        with timer.span("waiting_for_rollout"):
            messages = self.queue.take()
        batch = self._my_batch(messages)
        lags = state.policy_version - batch.policy_versions
        stale = lags > self.async_cfg.max_policy_lag
        assert self.async_cfg.stale_batches == "drop" or not stale.any(), "the schedule bounds it"
        batch.mask = batch.mask * (~stale).to(batch.mask).unsqueeze(1)  # too old: no loss
        sampling = self.data.sampling(step, learner.dims.dp_rank())
        global_tokens = float(all_reduce_dp(learner.dims, batch.mask.sum().double()))
        with learner.verifier(timer) as view:
            scored = learner.score(view, batch, sampling, self.drafters.adapter,
                                   max(global_tokens, 1.0), timer)
        state.drafter_version += self.drafters.adapter is not None
        batch.is_weights, batch.is_cut = is_weights(
            batch.old_logprobs, batch.behaviour_logprobs, batch.mask, lags, self.rl.rollout_is,
            self.rl.rollout_is_cap, self.rl.rollout_is_floor, self.async_cfg.is_cap)
        lr, trained = learner.lr, {}
        # Every group dropped: no update (an optimizer step on zero gradients still moves).
        if global_tokens > 0:
            with timer.span("train"):
                trained, updates = learner.policy_step(batch, sampling, self.rl)
            state.policy_version += updates
        synced = self._publish(step)
        timer.add("weight_sync", synced.pop("seconds"))
        # weight_sync_bytes is this rank's (rank 0's in the record); the busiest learner rank:
        synced["weight_sync_bytes_max_rank"] = int(dp_max(
            learner.dims, [synced["weight_sync_bytes"]], learner.device)[0])
        rollout = RolloutStats.from_messages(messages)
        return {"step": step, "phase": "rl", "lr": lr, **trained, **scored, **synced,
                **rollout.record(self.drafters, self.is_main),
                **batch_record(batch, rollout.samples, learner.dims, learner.device, lags,
                               self.async_cfg.max_policy_lag),
                **timer.record(), **memory_record(learner.device)}

    def _my_batch(self, messages):
        """This learner rank's share of every replica's samples, as a training batch."""
        merged = {key: [x for m in messages for x in getattr(m, key)] for key in _FIELDS}
        policy_versions = [m.policy_version for m in messages for _ in m.prompts]
        drafter_versions = [m.drafter_version for m in messages for _ in m.prompts]
        dims = self.learner.dims
        per_rank = len(merged["prompts"]) // dims.dp
        mine = slice(dims.dp_rank() * per_rank, (dims.dp_rank() + 1) * per_rank)
        completions = [Completion(ids, logprobs) for ids, logprobs in
                       zip(merged["token_ids"][mine], merged["logprobs"][mine], strict=True)]
        return self.data.to_batch(merged["prompts"][mine], completions, merged["rewards"][mine],
                                  policy_versions[mine], drafter_versions[mine])
