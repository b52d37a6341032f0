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

from titan_spec import comm
from titan_spec.models.init import canonical_name

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
    """A 1-element int64 tensor on flat's device that catches changed, swapped or zeroed
    elements: on the host, CRC32 of the raw bytes (at memory speed; a weighted sum in torch
    cost 13x more there); on an accelerator, device_checksum, so a bucket never makes a
    round trip to the host to be checked. Sender and receiver hold their buckets on the same
    kind of device, so both compute the same kind."""
    if flat.device.type != "cpu":
        return device_checksum(flat)
    data = flat.detach().contiguous().view(torch.uint8).numpy()
    return torch.tensor([zlib.crc32(data)], dtype=torch.int64, device=flat.device)


def device_checksum(flat: torch.Tensor, chunk_words: int = 1 << 22) -> torch.Tensor:
    """sum_i (i + 1) * word_i mod 2**64 over the bytes as 32-bit words (zero-padded), in
    tensor ops on flat's device: position-weighted, so a swap changes it; integer, so the
    result does not depend on the reduction order. Chunked to bound the int64 temporaries."""
    data = flat.detach().contiguous().view(torch.uint8).reshape(-1)
    pad = (-data.numel()) % 4
    if pad:
        data = torch.cat([data, data.new_zeros(pad)])
    words = data.view(torch.int32)
    total = torch.zeros((), dtype=torch.int64, device=flat.device)
    for start in range(0, words.numel(), chunk_words):
        part = words[start:start + chunk_words].to(torch.int64) & 0xFFFFFFFF
        weights = torch.arange(start + 1, start + 1 + part.numel(), dtype=torch.int64,
                               device=flat.device)
        total += (part * weights).sum()
    return total.reshape(1)


def runs(items: list, nbytes_of, bucket_bytes: int) -> list[list]:
    """Consecutive runs of `items` of at most bucket_bytes (an item larger than that gets a
    bucket of its own): the one grouping both sides of a sync compute."""
    groups, size = [], 0
    for item in items:
        nbytes = nbytes_of(item)
        if not groups or size + nbytes > bucket_bytes:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += nbytes
    return groups


def bucket_groups(shapes: list[tuple[str, tuple]], bucket_bytes: int) -> list[list]:
    """(name, full shape) runs of at most bucket_bytes in fp32."""
    return runs([(name, tuple(shape)) for name, shape in shapes],
                lambda item: torch.Size(item[1]).numel() * 4, bucket_bytes)


def synced_tensors(model: nn.Module) -> dict:
    """What a sync carries, by the name both sides agree on (FSDP / checkpoint wrappers
    stripped): every parameter and every buffer the state dict keeps (an EAGLE-3 head's
    vocabulary map). Buffers travel in the float32 buckets too; integer and boolean ones are
    exact there (values < 2**24)."""
    persistent = set(model.state_dict())
    tensors = {canonical_name(n): p for n, p in model.named_parameters()}
    tensors.update({canonical_name(n): b for n, b in model.named_buffers() if n in persistent})
    return tensors


def _full(param) -> torch.Tensor:
    return param.full_tensor() if isinstance(param, DTensor) else param.detach()


# Buckets the learner may have sent but not yet seen received before a send waits.
DEFAULT_STAGING_BYTES = 2 << 30


class WeightSync:
    """One sync group: the learner's first rank (source) and every rollout rank."""

    broadcasts = True  # buckets go out as broadcasts (the sharded sync sends point to point)

    def __init__(self, source_rank: int, rollout_ranks: list[int], bucket_bytes: int = 64 << 20,
                 rollout_tp: int = 1, rollout_tp_rank: int = 0, n_kv_heads: int = 1,
                 staging_bytes: int | None = DEFAULT_STAGING_BYTES,
                 device: torch.device | str = "cpu", fanout: list[list[int]] | None = None):
        """n_kv_heads: the model's, for the KV-head copies of a rollout tp above it.
        staging_bytes: buckets the source may have sent but not yet seen received; the send
        returns at once while they fit, and waits for the rollout side beyond that (None: it
        never waits).
        fanout: the rollout ranks split into parts that each get their own broadcast, so that
        no rollout rank relays buckets to another part (default: one broadcast to all).
        device: where the buckets travel from and to (the ranks' CUDA device under NCCL)."""
        self.device = torch.device(device)
        self.source_rank, self.rollout_ranks = source_rank, list(rollout_ranks)
        self.bucket_bytes = bucket_bytes
        self.staging_bytes = float("inf") if staging_bytes is None else staging_bytes
        self._in_flight: deque[tuple[dist.Work, torch.Tensor]] = deque()
        self._header = None  # a rollout rank's posted receive of the next header
        self.rollout_tp, self.rollout_tp_rank = rollout_tp, rollout_tp_rank
        self.n_kv_heads = n_kv_heads
        # new_group is collective over the default group: every rank builds every one.
        # Buckets travel on the data plane; the header on the control plane, so that a rollout
        # rank polls a host receive between batches, not a posted NCCL kernel.
        parts = fanout or [self.rollout_ranks]
        self.groups = [comm.new_group([source_rank] + part) for part in parts] \
            if self.broadcasts else []
        self.header_groups = [comm.new_group([source_rank] + part, comm.CONTROL)
                              for part in parts]
        self.rank = dist.get_rank()
        mine = [i for i, part in enumerate(parts) if self.rank in part]
        # a rollout rank's broadcasts
        self.group = self.groups[mine[0]] if mine and self.groups else None
        self.header_group = self.header_groups[mine[0]] if mine else None

    def prepare(self, model: nn.Module) -> None:
        """Nothing to plan: every sync gathers and broadcasts by name (the sharded sync plans
        here, collectively, once before its first sync)."""

    # ------------------------------------------------------------------ learner side
    def send(self, model: nn.Module, version: int) -> SyncReport:
        """Every learner rank calls this (the gathers are collective over the learner mesh).
        The header (version, bucket count) goes first, so a rollout rank can poll for it."""
        start, sent = time.perf_counter(), 0
        params = dict(sorted(synced_tensors(model).items()))
        groups = bucket_groups([(name, p.shape) for name, p in params.items()],
                               self.bucket_bytes)
        if self.rank == self.source_rank:
            self._launch(torch.tensor([version, len(groups)], dtype=torch.int64),
                         self.header_groups)
        for group in groups:
            fulls = [_full(params[name]).float().reshape(-1) for name, _ in group]
            if self.rank == self.source_rank:
                sent += self._broadcast(fulls)
        return SyncReport(version, sent, len(groups), time.perf_counter() - start)

    def _broadcast(self, tensors: list[torch.Tensor]) -> int:
        bucket = torch.cat(tensors)
        self._launch(bucket, self.groups)
        self._launch(checksum(bucket), self.groups)
        return bucket.numel() * bucket.element_size()

    def _launch(self, tensor: torch.Tensor, groups: list) -> None:
        """Non-blocking broadcast from the source: the rollout side takes it between batches,
        so a blocking send would idle the learner until the current batch is generated."""
        while self._in_flight and self._in_flight[0][0].is_completed():
            self._in_flight.popleft()  # received: its buffer can go
        while self._in_flight and self._staged() + tensor.nbytes > self.staging_bytes:
            comm.wait_on_host(*self._in_flight.popleft())
        for group in groups:
            work = comm.broadcast(tensor, self.source_rank, group=group, async_op=True)
            self._in_flight.append((work, tensor))

    def _staged(self) -> int:
        return sum({id(tensor): tensor.nbytes for _, tensor in self._in_flight}.values())

    def wait(self) -> None:
        """Until the rollout side has received everything sent (call before shutting down)."""
        while self._in_flight:
            comm.wait_on_host(*self._in_flight.popleft())

    # ------------------------------------------------------------------ rollout side
    def _local_params(self, model: nn.Module, full_shapes: dict) -> dict:
        named = synced_tensors(model)
        missing = sorted(set(full_shapes) ^ set(named))
        if missing:
            raise WeightSyncError(f"learner and rollout models hold different parameters: "
                                  f"{missing[:5]}")
        return named

    def header_ready(self) -> bool:
        """Rollout ranks, without blocking: has the next sync's header arrived? (Posts its
        receive on first call; call only when a sync is still to come.)"""
        if self._header is None:
            buffer = torch.empty(2, dtype=torch.int64)
            work = comm.broadcast(buffer, self.source_rank, group=self.header_group,
                                  async_op=True)
            self._header = (work, buffer)
        return self._header[0].is_completed()

    def _take_header(self) -> torch.Tensor:
        if self._header is None:
            self.header_ready()
        work, header = self._header
        work.wait()
        self._header = None
        return header

    @torch.no_grad()
    def receive(self, model: nn.Module, full_shapes: dict) -> SyncReport:
        """Rollout ranks: wait for the next sync, receive every bucket, verify it, copy this
        rank's part of each parameter into `model`. full_shapes: canonical name -> full
        (learner) shape."""
        start, received = time.perf_counter(), 0
        named = self._local_params(model, full_shapes)
        groups = bucket_groups(sorted(full_shapes.items()), self.bucket_bytes)
        header = self._take_header()
        if int(header[1]) != len(groups):
            raise WeightSyncError(f"the learner sends {int(header[1])} buckets, this rank "
                                  f"expects {len(groups)}: bucket_bytes differ between the sides.")
        damaged = []
        for index, group in enumerate(groups):
            numel = sum(torch.Size(shape).numel() for _, shape in group)
            bucket = torch.empty(numel, dtype=torch.float32, device=self.device)
            comm.broadcast(bucket, self.source_rank, group=self.group)
            expected = torch.empty(1, dtype=torch.int64, device=self.device)
            comm.broadcast(expected, self.source_rank, group=self.group)
            bucket = self.on_arrival(bucket, index)
            if torch.equal(checksum(bucket), expected):
                self._apply(bucket, group, named)
            else:
                damaged.append(f"bucket {index} ({group[0][0]} .. {group[-1][0]})")
            received += bucket.numel() * 4
        if damaged:
            raise WeightSyncError(f"{', '.join(damaged)} failed the checksum on arrival and "
                                  "were not applied; the rollout weights are incomplete.")
        return SyncReport(int(header[0]), received, len(groups), time.perf_counter() - start)

    def on_arrival(self, bucket: torch.Tensor, index: int) -> torch.Tensor:
        """Hook between arrival and verification (tests inject faults here)."""
        return bucket

    def _apply(self, bucket: torch.Tensor, group: list, named: dict) -> None:
        offset = 0
        for name, full_shape in group:
            local = named[name]
            size = torch.Size(full_shape).numel()
            full = rollout_slice(name, bucket[offset:offset + size].view(full_shape),
                                 self.rollout_tp, self.rollout_tp_rank, self.n_kv_heads)
            offset += size
            if full.shape != local.shape:
                raise WeightSyncError(f"{name}: the rollout side holds {tuple(local.shape)}, "
                                      f"the learner's slice is {tuple(full.shape)}.")
            local.copy_(full.to(local.dtype))
