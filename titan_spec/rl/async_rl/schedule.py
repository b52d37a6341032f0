"""The async schedule: which policy version each batch is generated with, and how many weight
syncs a run sends. Deterministic, so every collective is matched and no rank can deadlock
(see the package docstring)."""

from __future__ import annotations

import torch

from titan_spec import comm


def weights_needed(step: int, max_lag: int) -> int:
    """Policy version (counted from the run's start) the rollout side must hold to generate
    batch `step` (1-based, counted from the start)."""
    return max(0, step - 1 - max_lag)


def syncs_sent(total_steps: int, max_lag: int, stale_batches: str) -> int:
    """Weight syncs the learner sends in a run of total_steps batches: the first (before step
    1), then one after each step whose version a later batch can still use. Under "wait" batch
    s uses exactly version s - 1 - max_lag; under "drop" any later batch may take the newest."""
    if total_steps <= 0:  # e.g. resumed from the run's last checkpoint: nothing is sent
        return 0
    return 1 + weights_needed(total_steps, max_lag if stale_batches == "wait" else 0)


def share_start_point(step: int = 0, version: int = 0) -> tuple[int, int]:
    """Learner rank 0 tells every rank of the job the global step and policy version the run
    starts from (0, 0 unless a checkpoint was loaded). Collective over the whole job, on the
    control plane: two integers, no pickled object between ranks."""
    point = torch.tensor([step, version], dtype=torch.int64)
    comm.broadcast(point, 0, group=comm.control_group())
    step, version = point.tolist()
    return step, version
