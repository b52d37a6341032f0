"""Learner -> rollout weight sync without gathering (async_rl.weight_sync = sharded).

Every learner rank sends what it holds, and every rollout rank receives only its own slice:
the plan (reshard_plan.py) is computed once, at the start of RL, from the learner ranks' shard
boxes (exchanged on the control plane), the rollout layout's boxes (rollout_layout.rollout_box)
and the rollout model's dtypes. A sync then sends, from each learner rank to each rollout rank
it has parts for, buckets of those parts already cast to the rollout dtype (bf16 on the wire
for a bf16 rollout model), each followed by its checksum, point to point on the data plane.
No rank allocates a full parameter, and a rollout rank's bytes are its slice's bytes.

The header (version, tensor count) still comes from the learner's first rank on the control
plane, so a rollout rank polls for a sync exactly as with the broadcast sync (weight_sync.py),
whose staging bound, fault hook and errors this one shares."""

from __future__ import annotations

import time

import torch
from torch import nn

from titan_spec import comm

from .reshard_plan import Box, Transfer, box_numel, local_box, piece, plan_transfers, relative
from .rollout_layout import rollout_box
from .weight_sync import SyncReport, WeightSync, WeightSyncError, checksum, runs, synced_tensors


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def _buckets(transfers: list[Transfer], dtypes: dict, bucket_bytes: int) -> list[list[Transfer]]:
    """Consecutive transfers of one (learner, rollout) pair in runs of at most bucket_bytes."""
    return runs(transfers, lambda t: box_numel(t.box) * dtypes[t.name].itemsize, bucket_bytes)


def _boxes_or_error(tensors: dict) -> dict:
    try:
        return {"boxes": {name: local_box(t) for name, t in tensors.items()}}
    except ValueError as err:
        return {"error": str(err)}


class ShardedWeightSync(WeightSync):
    """learner_ranks send; rollout_ranks (replicas of rollout_tp consecutive ranks) receive."""

    broadcasts = False

    def __init__(self, learner_ranks: list[int], rollout_ranks: list[int], **kw):
        super().__init__(learner_ranks[0], rollout_ranks, **kw)
        self.learner_ranks = list(learner_ranks)
        self.planned = False
        self.dtypes: dict[str, torch.dtype] = {}
        self.names = 0  # parameters a sync carries: the header's check that both sides agree
        # this rank's buckets, by peer: what a learner rank sends to each rollout rank, or
        # what a rollout rank receives from each learner rank
        self.buckets: dict[int, list[list[Transfer]]] = {}
        self.my_box: dict[str, Box] = {}

    # ------------------------------------------------------------------ both sides
    def prepare(self, model: nn.Module) -> None:
        """Collective over the whole job, once before the first sync: every rank passes its
        own model (the learner's sharded one, or the rollout slice)."""
        tensors = synced_tensors(model)
        boxes = {}
        for src in self.learner_ranks:
            received = comm.broadcast_json(_boxes_or_error(tensors) if src == self.rank
                                           else None, src)
            if "error" in received:  # raised on every rank, so none waits for the others
                raise ValueError(received["error"])
            boxes[src] = {name: tuple(map(tuple, box)) for name, box in received["boxes"].items()}
        first = self.rollout_ranks[0]
        dtypes = comm.broadcast_json({n: str(t.dtype) for n, t in tensors.items()}
                                     if self.rank == first else None, first)
        shapes = comm.broadcast_json({n: list(t.shape) for n, t in tensors.items()}
                                     if self.rank == self.source_rank else None, self.source_rank)
        self.dtypes = {name: _dtype(dtype) for name, dtype in dtypes.items()}
        self.names = len(shapes)
        rollout_boxes = {
            rank: {name: rollout_box(name, shape, self.rollout_tp, index % self.rollout_tp,
                                     self.n_kv_heads) for name, shape in shapes.items()}
            for index, rank in enumerate(self.rollout_ranks)}
        problem = ""
        if self.rank in self.learner_ranks:
            self.my_box = boxes[self.rank]
            mine = plan_transfers(boxes, rollout_boxes, src=self.rank)
            peers, key = self.rollout_ranks, "dst"
        else:  # each rollout rank checks that the learner shards cover its own boxes
            self.my_box = rollout_boxes[self.rank]
            try:
                mine = plan_transfers(boxes, rollout_boxes, dst=self.rank)
            except ValueError as err:
                mine, problem = [], str(err)
            peers, key = self.learner_ranks, "src"
        failed = torch.tensor([int(bool(problem))])
        comm.all_reduce(failed, op=comm.MAX, group=comm.control_group())
        if int(failed):  # on every rank, so that none waits for a sync that cannot come
            raise ValueError(problem or "the weight sync's plan does not cover a rollout "
                             "rank's slice (that rank's error names the parameter)")
        self.buckets = {peer: _buckets([t for t in mine if getattr(t, key) == peer],
                                       self.dtypes, self.bucket_bytes) for peer in peers}
        self.planned = True

    # ------------------------------------------------------------------ learner side
    @torch.no_grad()
    def send(self, model: nn.Module, version: int) -> SyncReport:
        """Every learner rank: post this rank's buckets to the rollout ranks (non-blocking
        while the staged bytes fit). -> the bytes this rank sent."""
        start, sent = time.perf_counter(), 0
        if not self.planned:
            raise WeightSyncError("prepare() must run on every rank before the first sync.")
        if self.rank == self.source_rank:
            self._launch(torch.tensor([version, self.names], dtype=torch.int64),
                         self.header_groups)
        locals_ = {name: t.to_local() if hasattr(t, "to_local") else t.detach()
                   for name, t in synced_tensors(model).items()}
        for dst in self.rollout_ranks:
            for bucket in self.buckets[dst]:
                flat = torch.cat([piece(locals_[t.name], self.my_box[t.name], t.box,
                                        self.dtypes[t.name]) for t in bucket])
                self._post(flat, dst)
                self._post(checksum(flat), dst)
                sent += flat.numel()
        buckets = sum(len(b) for b in self.buckets.values())
        return SyncReport(version, sent, buckets, time.perf_counter() - start)

    def _post(self, tensor: torch.Tensor, dst: int) -> None:
        while self._in_flight and self._in_flight[0][0].is_completed():
            self._in_flight.popleft()
        while self._in_flight and self._staged() + tensor.nbytes > self.staging_bytes:
            comm.wait_on_host(*self._in_flight.popleft())
        self._in_flight.append((comm.isend(tensor, dst), tensor))

    # ------------------------------------------------------------------ rollout side
    @torch.no_grad()
    def receive(self, model: nn.Module, full_shapes: dict) -> SyncReport:
        """Rollout ranks: wait for the next sync, receive this rank's parts from every
        learner rank, verify each bucket, copy the parts into `model`."""
        start, received = time.perf_counter(), 0
        named = self._local_params(model, full_shapes)
        header = self._take_header()
        if int(header[1]) != self.names:
            raise WeightSyncError(f"the learner sends {int(header[1])} tensors, this rank's "
                                  f"plan has {self.names}: the two sides planned differently.")
        damaged, index = [], 0
        for src in self.learner_ranks:
            for bucket in self.buckets[src]:
                nbytes = sum(box_numel(t.box) * self.dtypes[t.name].itemsize for t in bucket)
                flat = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
                comm.recv(flat, src)
                expected = torch.empty(1, dtype=torch.int64, device=self.device)
                comm.recv(expected, src)
                flat = self.on_arrival(flat, index)
                if torch.equal(checksum(flat), expected):
                    self._apply_parts(flat, bucket, named, self.my_box)
                else:
                    damaged.append(f"bucket {index} from rank {src} ({bucket[0].name} .. "
                                   f"{bucket[-1].name})")
                received += nbytes
                index += 1
        if damaged:
            raise WeightSyncError(f"{', '.join(damaged)} failed the checksum on arrival and "
                                  "were not applied; the rollout weights are incomplete.")
        return SyncReport(int(header[0]), received, index, time.perf_counter() - start)

    def _apply_parts(self, flat: torch.Tensor, bucket: list[Transfer], named: dict,
                     mine: dict) -> None:
        offset = 0
        for transfer in bucket:
            local, dtype = named[transfer.name], self.dtypes[transfer.name]
            nbytes = box_numel(transfer.box) * dtype.itemsize
            # A copy, so that the bytes are aligned for their dtype.
            values = flat[offset:offset + nbytes].clone().view(dtype)
            shape = [stop - start for start, stop in transfer.box]
            local[relative(transfer.box, mine[transfer.name])].copy_(values.view(shape))
            offset += nbytes

