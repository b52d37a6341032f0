"""One rank's process: the default process group from torchrun's environment, and its end.

Every entry point (the trainer, the tests' spawned ranks, the benchmarks) starts and stops a
rank through these functions, so the tear-down workaround below exists once."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Env:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(training_cfg) -> Env:
    """Init the default process group from torchrun's env vars (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = training_cfg.device == "cuda" or (
        training_cfg.device == "auto" and torch.cuda.is_available())
    if training_cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device=cuda but no CUDA device is visible; use auto or cpu.")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(training_cfg.threads_per_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                device_id=device if use_cuda else None)
    return Env(rank, world_size, device)


def close_distributed() -> None:
    """Leave the default process group once every rank is done with it."""
    if dist.is_initialized():
        # Without the barrier a rank that finishes first can tear gloo down while a peer's
        # last collective is still in flight (seen as 'terminate called' aborts).
        dist.barrier()
        dist.destroy_process_group()


def exit_now(code: int = 0) -> None:
    """End a finished multi-rank process without interpreter teardown: a gloo background
    thread can still be joinable there and abort the process ('terminate called without an
    active exception'), turning a finished run into a failed rank."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
