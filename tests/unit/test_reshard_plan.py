"""The sharded weight sync's plan: learner shard boxes intersected with rollout slices."""

import pytest
import torch

from titan_spec.parallel.reshard_plan import box_numel, piece, plan_transfers
from titan_spec.parallel.rollout_layout import rollout_box, rollout_slice


def _fsdp_rows(rows: int, cols: int, ranks: int) -> dict:
    """Learner boxes of dim-0 shards, torch.chunk-sized (the last rank gets fewer rows)."""
    step = -(-rows // ranks)
    return {r: {"w": ((min(r * step, rows), min((r + 1) * step, rows)), (0, cols))}
            for r in range(ranks)}


def test_each_rollout_box_is_assembled_from_the_learner_shards_exactly_once():
    learners = _fsdp_rows(10, 6, 3)  # rows 0-4, 4-8, 8-10
    rollouts = {3: {"w": ((0, 10), (0, 3))}, 4: {"w": ((0, 10), (3, 6))}}  # a rowwise split
    plan = plan_transfers(learners, rollouts)
    assert [(t.src, t.dst) for t in plan] == [(0, 3), (1, 3), (2, 3), (0, 4), (1, 4), (2, 4)]
    assert sum(box_numel(t.box) for t in plan if t.dst == 3) == 30
    # a rank plans its own part only, in the same order
    assert plan_transfers(learners, rollouts, src=1) == [t for t in plan if t.src == 1]
    assert plan_transfers(learners, rollouts, dst=4) == [t for t in plan if t.dst == 4]


def test_replicas_send_once_and_a_gap_is_refused():
    replicated = {0: {"w": ((0, 4), (0, 2))}, 1: {"w": ((0, 4), (0, 2))}}
    plan = plan_transfers(replicated, {2: {"w": ((0, 4), (0, 2))}})
    assert [t.src for t in plan] == [0]
    with pytest.raises(ValueError, match="do not cover rollout rank 2"):
        plan_transfers({0: {"w": ((0, 3), (0, 2))}}, {2: {"w": ((0, 4), (0, 2))}})


def test_rollout_box_is_the_slice_the_rollout_model_holds():
    full = torch.arange(8 * 6).reshape(8, 6)
    for name, tp, kv in (("layers.0.attention.wq.weight", 4, 8),
                         ("layers.0.attention.wo.weight", 2, 8),
                         ("layers.0.attention.wk.weight", 8, 2),
                         ("tok_embeddings.weight", 4, 8)):
        for rank in range(tp):
            box = rollout_box(name, full.shape, tp, rank, kv)
            cut = full[tuple(slice(a, b) for a, b in box)]
            assert torch.equal(cut, rollout_slice(name, full, tp, rank, kv))
    wk = [rollout_box("layers.0.attention.wk.weight", (8, 6), 8, r, 2)[0] for r in range(8)]
    assert wk == [(0, 4)] * 4 + [(4, 8)] * 4  # each KV head copied to the ranks that read it


def test_a_piece_is_the_box_cast_to_the_rollout_dtype_as_bytes():
    local = torch.randn(4, 6)  # holds rows 4-8 of the full tensor
    part = piece(local, ((4, 8), (0, 6)), ((5, 7), (2, 4)), torch.bfloat16)
    assert part.dtype == torch.uint8 and part.numel() == 2 * 2 * 2
    assert torch.equal(part.view(torch.bfloat16).view(2, 2), local[1:3, 2:4].bfloat16())
