"""The rollout side of async RL: on every rollout rank, receive weights, generate the step's
share with speculation, score it, and queue it for the learner (package docstring)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from titan_spec import comm
from titan_spec.components.run_status import set_phase
from titan_spec.drafters.runtime import DrafterRuntime
from titan_spec.formats.initial_load import model_args
from titan_spec.models import build_model_from_args, get_model_spec
from titan_spec.models.init import canonical_name
from titan_spec.parallel.fp8 import Fp8Plan
from titan_spec.parallel.rollout_layout import build_rollout_model, rollout_dtypes
from titan_spec.parallel.weight_sync import synced_tensors

from .queue import RolloutBatchMessage
from .schedule import share_start_point, syncs_sent, weights_needed


class RolloutWorker:
    def __init__(self, data, drafters, model, full_shapes: dict, layout, async_cfg, rollout_cfg,
                 vocab_size: int, device, steps: tuple[int, int]):
        """steps: (sft steps, sft + rl steps) of the job: RL batches are generated after SFT."""
        self.data, self.drafters, self.model, self.full_shapes = data, drafters, model, full_shapes
        self.dims, self.queue = layout.rollout_dims, layout.queue
        self.policy_sync, self.drafter_sync = layout.policy_sync, layout.drafter_sync
        self.async_cfg, self.rollout = async_cfg, rollout_cfg
        self.vocab_size, self.device = vocab_size, device
        self.version, self.drafter_version, self.syncs, self.total_syncs = -1, 0, 0, 0
        self.replica, self.replicas = self.dims.dp_rank(), self.dims.dp
        self.tp_group = self.dims.tp_group()
        self.is_leader = self.dims.tp_rank() == 0
        # Blocked on (and receiving) weights since the last batch: the rollout side's idle time.
        self.time_waiting_for_weights = 0.0
        self.weight_bytes_received = 0  # by this rank, since its last batch
        self.batch_updates, self.time_inflight = 0, 0.0
        self.sft_steps, self.total_steps = steps

    @classmethod
    def build(cls, cfg, env, layout, data) -> "RolloutWorker":
        """A rollout rank's parts: its slice of the policy (filled by the weight sync), its own
        drafter, the job's RL data."""
        spec = get_model_spec(cfg.model.name)
        args = model_args(cfg)
        dims = layout.rollout_dims
        model = build_rollout_model(spec.builder, args, env.device, dims.tp, dims.tp_group(),
                                    rollout_dtypes(cfg.parallelism))
        Fp8Plan(cfg.quantize).verifier(model)  # the same FP8 forward as the learner's recompute
        full = build_model_from_args(cfg.model.name, args)
        full_shapes = {canonical_name(n): tuple(p.shape) for n, p in full.named_parameters()}
        drafters = DrafterRuntime.build(cfg.drafter, cfg.model, args, model, cfg.job.seed,
                                        env.device)
        return cls(data, drafters, model, full_shapes, layout, cfg.async_rl, cfg.rollout,
                   data.tokenizer.vocab_size, env.device,
                   (cfg.sft.steps, cfg.sft.steps + cfg.rl.steps))

    def run(self) -> None:
        """Generate the batches from where the learner starts (it shares that) to the end."""
        step, _ = share_start_point()
        self.policy_sync.prepare(self.model)
        self.generate_steps(max(step, self.sft_steps) + 1, self.total_steps)

    def close(self) -> None:
        """Nothing to flush: rollout ranks write no files."""

    def generate_steps(self, first_step: int, total_steps: int) -> None:
        """Generate the batches of global steps first_step..total_steps."""
        lag, stale_batches = self.async_cfg.max_policy_lag, self.async_cfg.stale_batches
        self.total_syncs = syncs_sent(total_steps - first_step + 1, lag, stale_batches)
        for step in range(first_step, total_steps + 1):
            if stale_batches == "wait":
                wanted = 1 + weights_needed(step - first_step + 1, lag)
            else:  # the first weights, then whatever has arrived
                wanted = 1
                self._take_arrived_syncs()
            while self.syncs < wanted:
                self._receive_weights()
            set_phase("rollout", step)
            message = self.generate(step)
            message.stats["time_waiting_for_weights_s"] = self.time_waiting_for_weights
            message.stats["weight_bytes_received"] = self.weight_bytes_received
            self.time_waiting_for_weights, self.weight_bytes_received = 0.0, 0
            if self.is_leader:
                self.queue.put(message)
        while self.syncs < self.total_syncs:  # versions sent after this side's last batch
            self._receive_weights()
        self.queue.drain()

    @torch.no_grad()
    def generate(self, step: int) -> RolloutBatchMessage:
        prompts = self.data.prompts(step, self.replica, self.replicas)
        sampling = self.data.sampling(step, self.replica)
        # A batch is stamped with the versions it started from: the oldest any token may have
        # (in-flight updates only make later tokens newer), so the lag is never understated.
        start, first_version, first_drafter = time.perf_counter(), self.version, \
            self.drafter_version
        self.batch_updates, self.time_inflight = 0, 0.0
        hook = self._between_iterations if self.async_cfg.inflight_weight_updates else None
        engine = self.drafters.engine(self.model, prompts.token_ids, self.rollout,
                                      self.vocab_size, self.dims)
        completions = engine.generate(prompts.token_ids, sampling, prompts.group_ids, hook)
        rewards = self.data.rewards(prompts.problems, completions)
        stats = dict(engine.last_stats, weight_updates_in_batch=self.batch_updates,
                     time_inflight_weights_s=self.time_inflight,
                     time_generate_s=time.perf_counter() - start - self.time_inflight)
        return RolloutBatchMessage(step, first_version, first_drafter, prompts.token_ids,
                                   [c.token_ids for c in completions],
                                   [c.logprobs for c in completions], rewards, stats)

    def _receive_weights(self) -> None:
        wait_start = time.perf_counter()
        report = self.policy_sync.receive(self.model, self.full_shapes)
        self.version, self.syncs = report.version, self.syncs + 1
        self.weight_bytes_received += report.bytes
        module = self.drafters.module
        if module is not None:
            shapes = {n: tuple(t.shape) for n, t in synced_tensors(module).items()}
            drafted = self.drafter_sync.receive(module, shapes)
            self.drafter_version = drafted.version
            self.weight_bytes_received += drafted.bytes
        self.time_waiting_for_weights += time.perf_counter() - wait_start

    def _sync_arrived(self) -> bool:
        """Without blocking: has the next sync arrived on every rank of this replica?"""
        ready = torch.tensor([int(self.policy_sync.header_ready())], device=self.device)
        if self.tp_group is not None:  # peers must switch weights together
            comm.all_reduce(ready, op=dist.ReduceOp.MIN, group=self.tp_group)
        return bool(ready.item())

    def _take_arrived_syncs(self) -> int:
        """Receive every sync that has arrived (never block for one that has not): the newest
        weights this side can have now. Returns how many it took."""
        taken = 0
        while 0 < self.syncs < self.total_syncs and self._sync_arrived():
            self._receive_weights()
            taken += 1
        return taken

    def _between_iterations(self) -> None:
        """In-flight updates (async_rl.inflight_weight_updates): switch weights mid-batch. Their
        time is its own figure, neither idle time before the batch nor generation."""
        waited, start = self.time_waiting_for_weights, time.perf_counter()
        self.batch_updates += self._take_arrived_syncs()
        self.time_waiting_for_weights = waited
        self.time_inflight += time.perf_counter() - start
