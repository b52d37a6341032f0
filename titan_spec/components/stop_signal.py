"""Preemption: SIGTERM and SIGUSR1 ask this rank to stop after the current step.

The handler only records the request, so a signal that arrives during a save (or a second
one: Slurm signals every process of a step, torchrun forwards what it receives) changes
nothing in flight. At each step's end the ranks that train together agree on it with one
all-reduce (a signal reaches ranks at different moments; all must stop after the same step),
save a checkpoint of that step and exit with PREEMPTED_EXIT."""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from titan_spec import comm

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: not done, run the same command again to resume

_received: list[str] = []


def _record(signum, frame) -> None:
    _received.append(signal.Signals(signum).name)


def install() -> None:
    """Record SIGTERM / SIGUSR1 instead of dying (main thread only, as Python requires)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)


def received() -> str | None:
    """The first stop signal this rank received, or None."""
    return _received[0] if _received else None


def agreed(group=None) -> bool:
    """True on every rank of `group` (a control group; None: the world's) when any of them
    received a stop signal; a collective, so every rank of the group must call it at the same
    point. A host all-reduce on the control plane: no device sync at each step's end."""
    wanted = torch.tensor([int(bool(_received))])
    if dist.is_available() and dist.is_initialized():
        comm.all_reduce(wanted, op=comm.MAX, group=group if group is not None
                        else comm.control_group())
    return bool(wanted.item())


class Preempted(Exception):
    """Raised on every rank after the checkpoint of the step at which the job stopped."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        outcome = f"saved checkpoint {checkpoint}; rerun the same command to resume" \
            if checkpoint else "nothing saved (checkpoint.enable = false): a rerun starts over"
        super().__init__(f"preempted ({signal_name}) after step {step}: {outcome}")
