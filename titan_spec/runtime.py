"""One rank's process: the default process group from torchrun's environment, and its end.

Every entry point (the trainer, the tests' spawned ranks, the benchmarks) starts and stops a
rank through these functions, so the tear-down workaround below exists once."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from titan_spec import comm


@dataclass
class Env:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Under a launcher (torchrun's agent is the parent), end this rank when the launcher dies,
    however it dies: torchrun puts each worker in its own session, so without this a kill -9
    of the launcher leaves the ranks training on, headless, writing the dump folder."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def uses_cuda(training_cfg) -> bool:
    """Whether this rank will run on CUDA (training.device cuda, or auto with one visible)."""
    return training_cfg.device == "cuda" or (
        training_cfg.device == "auto" and torch.cuda.is_available())


def setup_distributed(training_cfg, timeout_s: float | None = None) -> Env:
    """Init the default process group from torchrun's env vars (NCCL on CUDA, gloo on CPU).
    timeout_s: the longest wait of a collective (comm.timeout_s) before it fails."""
    die_with_parent()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = uses_cuda(training_cfg)
    if training_cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device=cuda but no CUDA device is visible; use auto or cpu.")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(training_cfg.threads_per_rank)
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout,
                                device_id=device if use_cuda else None)
    comm.configure(device, timeout_s)  # the data plane's device, the control plane's group
    return Env(rank, world_size, device)


def close_distributed() -> None:
    """Leave the default process group once every rank is done with it."""
    if dist.is_initialized():
        # Without the barrier a rank that finishes first can tear gloo down while a peer's
        # last collective is still in flight (seen as 'terminate called' aborts).
        comm.barrier()
        dist.destroy_process_group()


def exit_now(code: int = 0) -> None:
    """End a finished multi-rank process without interpreter teardown: a gloo background
    thread can still be joinable there and abort the process ('terminate called without an
    active exception'), turning a finished run into a failed rank."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
