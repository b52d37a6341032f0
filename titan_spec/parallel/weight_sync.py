"""Learner -> rollout weight sync for async RL, resharding on the way.

The learner holds its parameters in its own layout (FSDP2 / TP / EP DTensors over the learner
mesh); each rollout rank holds a plain module in the rollout layout: whole parameters, or its
tensor-parallel slice (parallel/rollout_layout.py: heads, SwiGLU and expert columns).
A sync walks the parameters in one agreed order (canonical names, sorted). Every learner rank
takes part in gathering each full parameter (one DTensor collective per parameter, so the
extra memory is one parameter plus the staged buckets); the learner's first rank packs them
into buckets of at most `bucket_bytes` and broadcasts each bucket, with a checksum, to the
rollout ranks, without blocking while at most `staging_bytes` are still unreceived. Each
rollout rank verifies a bucket's checksum before it copies anything from it: a corrupted
bucket is not applied, the rest of the sync is still drained (so the two sides stay in step),
and WeightSyncError is raised at the end naming the bad buckets."""

from __future__ import annotations

import time
import zlib
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from .init import canonical_name
from .rollout_layout import rollout_slice


class WeightSyncError(RuntimeError):
    """A bucket arrived damaged, or the two sides disagree on what they hold."""


@dataclass
class SyncReport:
    version: int
    bytes: int
    buckets: int
    seconds: float


def checksum(flat: torch.Tensor) -> torch.Tensor:
    """CRC32 of the raw bytes, as a 1-element int64 tensor on flat's device: catches changed,
    swapped or zeroed elements, at memory speed (a weighted sum in torch cost 13x more)."""
    data = flat.detach().contiguous().cpu().view(torch.uint8).numpy()
    return torch.tensor([zlib.crc32(data)], dtype=torch.int64, device=flat.device)


def _full(param) -> torch.Tensor:
    return param.full_tensor() if isinstance(param, DTensor) else param.detach()


class WeightSync:
    """One sync group: the learner's first rank (source) and every rollout rank."""

    def __init__(self, source_rank: int, rollout_ranks: list[int], bucket_bytes: int = 64 << 20,
                 rollout_tp: int = 1, rollout_tp_rank: int = 0, n_kv_heads: int = 1,
                 staging_bytes: int = 2 << 30, device: torch.device | str = "cpu"):
        """n_kv_heads: the model's, for the KV-head copies of a rollout tp above it.
        staging_bytes: buckets the source may have sent but not yet seen received; the send
        returns at once while they fit, and waits for the rollout side beyond that.
        device: where the buckets travel from and to (the ranks' CUDA device under NCCL)."""
        self.device = torch.device(device)
        self.source_rank, self.rollout_ranks = source_rank, list(rollout_ranks)
        self.bucket_bytes, self.staging_bytes = bucket_bytes, staging_bytes
        self._in_flight: deque[tuple[dist.Work, torch.Tensor]] = deque()
        self.rollout_tp, self.rollout_tp_rank = rollout_tp, rollout_tp_rank
        self.n_kv_heads = n_kv_heads
        # new_group is collective over the default group: every rank builds it.
        self.group = dist.new_group([source_rank] + self.rollout_ranks)
        self.rank = dist.get_rank()

    # ------------------------------------------------------------------ learner side
    def _learner_params(self, model: nn.Module) -> list[tuple[str, object]]:
        named = {canonical_name(n): p for n, p in model.named_parameters()}
        return sorted(named.items())

    def send(self, model: nn.Module, version: int) -> SyncReport:
        """Every learner rank calls this (the gathers are collective over the learner mesh)."""
        start, sent, buckets = time.perf_counter(), 0, 0
        pending: list[torch.Tensor] = []
        pending_bytes = 0
        for _, param in self._learner_params(model):
            full = _full(param).float().reshape(-1)
            if self.rank != self.source_rank:
                continue
            if pending and pending_bytes + full.numel() * 4 > self.bucket_bytes:
                sent += self._broadcast(pending)
                buckets += 1
                pending, pending_bytes = [], 0
            pending.append(full)
            pending_bytes += full.numel() * 4
        if self.rank == self.source_rank:
            if pending:
                sent += self._broadcast(pending)
                buckets += 1
            self._broadcast_header(version, buckets)
        return SyncReport(version, sent, buckets, time.perf_counter() - start)

    def _broadcast(self, tensors: list[torch.Tensor]) -> int:
        bucket = torch.cat(tensors)
        self._launch(bucket)
        self._launch(checksum(bucket))
        return bucket.numel() * bucket.element_size()

    def _broadcast_header(self, version: int, buckets: int) -> None:
        self._launch(torch.tensor([version, buckets], dtype=torch.int64, device=self.device))

    def _launch(self, tensor: torch.Tensor) -> None:
        """Non-blocking broadcast from the source: the rollout side takes it between batches,
        so a blocking send would idle the learner until the current batch is generated."""
        while self._in_flight and self._in_flight[0][0].is_completed():
            self._in_flight.popleft()  # received: its buffer can go
        while self._in_flight and self._staged() + tensor.nbytes > self.staging_bytes:
            work, _ = self._in_flight.popleft()
            work.wait()
        work = dist.broadcast(tensor, src=self.source_rank, group=self.group, async_op=True)
        self._in_flight.append((work, tensor))

    def _staged(self) -> int:
        return sum(tensor.nbytes for _, tensor in self._in_flight)

    def wait(self) -> None:
        """Until the rollout side has received everything sent (call before shutting down)."""
        while self._in_flight:
            work, _ = self._in_flight.popleft()
            work.wait()

    # ------------------------------------------------------------------ rollout side
    def _slots(self, model: nn.Module, full_shapes: dict) -> list:
        """(name, local parameter, full shape) in the agreed order."""
        named = {canonical_name(n): p for n, p in model.named_parameters()}
        missing = sorted(set(full_shapes) ^ set(named))
        if missing:
            raise WeightSyncError(f"learner and rollout models hold different parameters: "
                                  f"{missing[:5]}")
        return [(name, named[name], full_shapes[name]) for name in sorted(full_shapes)]

    @torch.no_grad()
    def receive(self, model: nn.Module, full_shapes: dict) -> SyncReport:
        """Rollout ranks: receive every bucket, verify it, copy this rank's part of each
        parameter into `model`. full_shapes: canonical name -> full (learner) shape."""
        start, received, buckets = time.perf_counter(), 0, 0
        slots = self._slots(model, full_shapes)
        index, damaged = 0, []
        while index < len(slots):
            group, numel = [], 0
            while index < len(slots):
                size = torch.Size(slots[index][2]).numel()
                if group and (numel + size) * 4 > self.bucket_bytes:
                    break
                group.append(slots[index])
                numel += size
                index += 1
            bucket = torch.empty(numel, dtype=torch.float32, device=self.device)
            dist.broadcast(bucket, src=self.source_rank, group=self.group)
            expected = torch.empty(1, dtype=torch.int64, device=self.device)
            dist.broadcast(expected, src=self.source_rank, group=self.group)
            bucket = self.on_arrival(bucket, buckets)
            if torch.equal(checksum(bucket), expected):
                self._apply(bucket, group)
            else:
                damaged.append(f"bucket {buckets} ({group[0][0]} .. {group[-1][0]})")
            received += bucket.numel() * 4
            buckets += 1
        header = torch.empty(2, dtype=torch.int64, device=self.device)
        dist.broadcast(header, src=self.source_rank, group=self.group)
        if int(header[1]) != buckets:
            raise WeightSyncError(f"the learner sent {int(header[1])} buckets, this rank "
                                  f"expected {buckets}: bucket_bytes differ between the sides.")
        if damaged:
            raise WeightSyncError(f"{', '.join(damaged)} failed the checksum on arrival and "
                                  "were not applied; the rollout weights are incomplete.")
        return SyncReport(int(header[0]), received, buckets, time.perf_counter() - start)

    def on_arrival(self, bucket: torch.Tensor, index: int) -> torch.Tensor:
        """Hook between arrival and verification (tests inject faults here)."""
        return bucket

    def _apply(self, bucket: torch.Tensor, group: list) -> None:
        offset = 0
        for name, local, full_shape in group:
            size = torch.Size(full_shape).numel()
            full = rollout_slice(name, bucket[offset:offset + size].view(full_shape),
                                 self.rollout_tp, self.rollout_tp_rank, self.n_kv_heads)
            offset += size
            if full.shape != local.shape:
                raise WeightSyncError(f"{name}: the rollout side holds {tuple(local.shape)}, "
                                      f"the learner's slice is {tuple(full.shape)}.")
            local.copy_(full.to(local.dtype))
