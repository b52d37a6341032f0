"""The two meshes of an async job and what connects them, built on every rank of the job
(process-group creation is collective over the whole job): learner ranks first, rollout ranks
last; a learner group; the policy and drafter weight syncs; the bounded queue."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from titan_spec import comm
from titan_spec.formats.initial_load import model_args
from titan_spec.parallel.parallel_dims import ParallelDims
from titan_spec.parallel.sharded_sync import ShardedWeightSync
from titan_spec.parallel.weight_sync import DEFAULT_STAGING_BYTES, WeightSync
from titan_spec.preflight import split_world

from .queue import RolloutQueue

log = logging.getLogger("titan_spec")


@dataclass
class AsyncLayout:
    learner_dims: ParallelDims
    rollout_dims: ParallelDims
    learner_group: object  # data plane
    learner_control: object  # control plane: the stop agreement, barriers, queue broadcasts
    policy_sync: WeightSync
    drafter_sync: WeightSync
    queue: RolloutQueue


def build_async_layout(cfg, env) -> AsyncLayout:
    learner, rollout = split_world(cfg, env.world_size)
    learner.build_meshes(env.device.type)
    rollout.build_meshes(env.device.type)
    learner_ranks = list(range(learner.world_size))
    learner_group = comm.new_group(learner_ranks)
    learner_control = comm.new_group(learner_ranks, comm.CONTROL)
    rollout_ranks = list(range(learner.world_size, env.world_size))
    tp = cfg.async_rl.rollout_tp
    tp_rank = rollout.tp_rank() if rollout.contains(env.rank) else 0
    args = model_args(cfg)
    fanout, staging = None, DEFAULT_STAGING_BYTES
    if cfg.async_rl.stale_batches == "drop":
        # A replica blocked on its bounded queue takes no sync until the learner takes its
        # batch: so no replica may relay another's buckets (one broadcast per replica), and
        # the learner must never wait for buckets to be taken (unbounded staging).
        fanout = [rollout_ranks[i:i + tp] for i in range(0, len(rollout_ranks), tp)]
        staging = None
        if env.rank == 0 and cfg.async_rl.weight_sync == "gather":
            log.warning("async_rl.stale_batches=drop: learner rank 0 holds every weight sync not "
                        "yet taken, up to about max_policy_lag + 2 fp32 copies of the "
                        "policy (%.1f GiB each)", args.num_params() * 4 / 2**30)
    policy_kw = dict(rollout_tp=tp, rollout_tp_rank=tp_rank, n_kv_heads=args.n_kv_heads,
                     device=env.device, fanout=fanout, staging_bytes=staging)
    if cfg.async_rl.weight_sync == "sharded":
        policy_sync = ShardedWeightSync(learner_ranks, rollout_ranks, **policy_kw)
    else:
        policy_sync = WeightSync(0, rollout_ranks, **policy_kw)
    drafter_sync = WeightSync(0, rollout_ranks, device=env.device, fanout=fanout,
                              staging_bytes=staging)  # drafters: held whole
    leaders = rollout_ranks[::tp]
    queue = RolloutQueue(cfg.async_rl.max_policy_lag + 1, leaders, learner_control,
                         learner.world_size)
    return AsyncLayout(learner, rollout, learner_group, learner_control, policy_sync,
                       drafter_sync, queue)
