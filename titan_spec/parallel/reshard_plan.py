"""Which learner rank sends which part of each parameter to which rollout rank: the plan of
a weight sync in which no rank gathers a parameter.

A part is a box, a (start, stop) range per dim of the full parameter. Each learner rank holds
one box of each parameter: FSDP2 cuts the rank's EP / TP shard along dim 0 into contiguous
rows, so its shard stays a box even where DTensor writes it as a strided shard (FSDP2 over EP
or over colwise TP on the same dim); partial placements are refused. Each rollout rank needs
one box (rollout_layout.rollout_box). The plan intersects them: a transfer is the part of a
rollout rank's box that one learner rank holds. Where several learner ranks hold the same box
(replicated placements), the lowest rank sends it. Every rank computes the same plan from the
same inputs, so sender and receiver agree on the order and size of every message."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.placement_types import _StridedShard

Box = tuple[tuple[int, int], ...]


def full_box(shape) -> Box:
    return tuple((0, int(n)) for n in shape)


def _box(offset, shape) -> Box:
    return tuple((int(o), int(o) + int(n)) for o, n in zip(offset, shape, strict=True))


def box_numel(box: Box) -> int:
    numel = 1
    for start, stop in box:
        numel *= max(0, stop - start)
    return numel


def intersect(a: Box, b: Box) -> Box | None:
    box = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b, strict=True))
    return box if box_numel(box) > 0 else None


def relative(box: Box, origin: Box) -> tuple[slice, ...]:
    """`box` as slices of a tensor holding `origin` (a box containing it)."""
    return tuple(slice(start - o0, stop - o0) for (start, stop), (o0, _) in zip(box, origin,
                                                                               strict=True))


def local_box(param) -> Box:
    """The box of the full parameter this rank's local tensor holds."""
    if not isinstance(param, DTensor):
        return full_box(param.shape)
    for placement in param.placements:
        if type(placement) not in (Shard, _StridedShard, Replicate):
            raise ValueError(f"a learner parameter placed as {param.placements} is not a box "
                             "of the full tensor: use async_rl.weight_sync=gather for this "
                             "layout.")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh,
                                                          param.placements)
    return _box(offset, shape)


def boxes_by_rank(param) -> dict[int, Box]:
    """The box each rank of `param`'s mesh holds: what local_box gives on that rank (the dry
    run plans a sync for ranks it does not run)."""
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

    mesh = param.device_mesh
    boxes = {}
    for coordinate in itertools.product(*(range(n) for n in mesh.shape)):
        shape, offset = _compute_local_shape_and_global_offset(
            param.shape, mesh.shape, list(coordinate), param.placements)
        boxes[int(mesh.mesh[coordinate])] = _box(offset, shape)
    return boxes


@dataclass(frozen=True)
class Transfer:
    name: str
    src: int  # learner rank
    dst: int  # rollout rank
    box: Box  # in full-parameter coordinates


def _senders(learner_boxes: dict[int, dict[str, Box]], name: str) -> list[tuple[int, Box]]:
    """(learner rank, box) of the holders of `name` that send: replicas' first holder only."""
    senders, seen = [], set()
    for src in sorted(learner_boxes):
        box = learner_boxes[src].get(name)
        if box is not None and box_numel(box) and box not in seen:
            seen.add(box)
            senders.append((src, box))
    return senders


def plan_transfers(learner_boxes: dict[int, dict[str, Box]],
                   rollout_boxes: dict[int, dict[str, Box]], src: int | None = None,
                   dst: int | None = None) -> list[Transfer]:
    """The transfers of a sync from learner rank `src` and to rollout rank `dst` (None: all),
    in the one order both sides use: by parameter name, then rollout rank, then learner rank.
    A rank plans its own transfers only: at 192 learner x 64 rollout ranks the whole plan has
    millions. ValueError when the learner boxes do not cover a planned rollout box exactly
    once (checked where dst is given or for all)."""
    transfers = []
    names = sorted(next(iter(rollout_boxes.values())))
    targets = sorted(rollout_boxes) if dst is None else [dst]
    for name in names:
        senders = _senders(learner_boxes, name)
        for target in targets:
            wanted = rollout_boxes[target][name]
            parts = [(rank, intersect(box, wanted)) for rank, box in senders
                     if src is None or rank == src]
            parts = [(rank, part) for rank, part in parts if part is not None]
            if src is None and sum(box_numel(part) for _, part in parts) != box_numel(wanted):
                raise ValueError(f"{name}: the learner ranks' shards {senders} do not cover "
                                 f"rollout rank {target}'s part {wanted} exactly once.")
            transfers += [Transfer(name, rank, target, part) for rank, part in parts]
    return transfers


def piece(local: torch.Tensor, origin: Box, box: Box, dtype: torch.dtype) -> torch.Tensor:
    """The part `box` of a tensor holding `origin`, cast to `dtype`, as flat bytes."""
    return local[relative(box, origin)].to(dtype).contiguous().view(-1).view(torch.uint8)
