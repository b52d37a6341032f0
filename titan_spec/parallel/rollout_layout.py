"""The rollout mesh's tensor-parallel layout (async RL): what each rank of a replica holds.

Every rank of a replica sees the same tokens. Attention is split by heads and the dense SwiGLU
by columns, as in training. MoE experts are split the same way, every expert's SwiGLU columns
over tp (expert tensor parallelism), so that one rollout rank holds 1/tp of a large MoE; the
router stays whole, every rank routes identically, and the expert outputs are partial sums
all-reduced over tp, one all-reduce per MoE layer. When tp exceeds the KV heads (Qwen3-235B has
4), each KV head is held by tp / n_kv_heads ranks, the ones whose query heads read it. The
embedding and output head are held whole (the EAGLE / MTP drafters read it); verification
computes only this rank's rows of it (rollout.vocab_parallel).

`rollout_box` is the one rule for which part of a full parameter a rank holds (`rollout_slice`
cuts it out): the weight syncs cut with it, the dry run sizes with it, the tests check with it."""

from __future__ import annotations

import torch
from torch import nn

from titan_spec import comm
from titan_spec.models.qwen3.moe import GroupedExperts

from .tensor_parallel import swap_row_parallel

# Parameter-name suffix -> the dim a rollout tp rank slices (absent: held whole).
_SLICE_DIM = {
    "attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0,
    "feed_forward.w1.weight": 0, "feed_forward.w3.weight": 0,
    "attention.wo.weight": 1, "feed_forward.w2.weight": 1,
    # GroupedExperts: w1 / w3 are [experts, dim, hidden], w2 is [experts, hidden, dim].
    "moe.experts.w1": 2, "moe.experts.w3": 2, "moe.experts.w2": 1,
}
_KV = ("attention.wk.weight", "attention.wv.weight")


def _slice_dim(name: str) -> int | None:
    for suffix, dim in _SLICE_DIM.items():
        if name.endswith(suffix):
            return dim
    return None


def _chunk(size: int, parts: int, index: int) -> tuple[int, int]:
    """torch.chunk's index-th part of `size` elements."""
    step = -(-size // parts)
    return min(index * step, size), min((index + 1) * step, size)


def rollout_box(name: str, shape, tp: int, tp_rank: int, n_kv_heads: int):
    """This rollout tp rank's part of the full parameter `name` of `shape`: a (start, stop)
    range per dim."""
    box = [(0, int(n)) for n in shape]
    dim = _slice_dim(name) if tp > 1 else None
    if dim is None:
        return tuple(box)
    if name.endswith(_KV) and tp > n_kv_heads:
        # Query heads are split tp ways; the ranks sharing a KV head hold a copy of it.
        box[0] = _chunk(shape[0], n_kv_heads, tp_rank * n_kv_heads // tp)
    else:
        box[dim] = _chunk(shape[dim], tp, tp_rank)
    return tuple(box)


def rollout_slice(name: str, full: torch.Tensor, tp: int, tp_rank: int,
                  n_kv_heads: int) -> torch.Tensor:
    """This rollout tp rank's part of the full parameter `name` (a view; `full` itself when
    the parameter is held whole). Works on meta tensors, for sizing."""
    box = rollout_box(name, full.shape, tp, tp_rank, n_kv_heads)
    return full[tuple(slice(start, stop) for start, stop in box)]


def rollout_local_args(args, tp: int):
    """Model shapes of one rollout tp rank's slice."""
    if tp == 1:
        return args
    return args.with_overrides(n_heads=args.n_heads // tp,
                               n_kv_heads=max(1, args.n_kv_heads // tp),
                               hidden_dim=args.hidden_dim // tp,
                               moe_hidden_dim=args.moe_hidden_dim // tp)


def check_rollout_tp(args, tp: int) -> None:
    """ValueError naming the shapes parallelism.rollout.tp does not divide."""
    sizes = {"n_heads": args.n_heads, "hidden_dim": args.hidden_dim}
    if args.is_moe:
        sizes["moe_hidden_dim"] = args.moe_hidden_dim
    bad = {key: value for key, value in sizes.items() if value % tp}
    if args.n_kv_heads % tp and tp % args.n_kv_heads:
        bad["n_kv_heads"] = args.n_kv_heads
    if bad:
        raise ValueError(f"async_rl.rollout_tp={tp} must divide the model's {bad} (and "
                         f"n_kv_heads={args.n_kv_heads} must divide tp or be divided by it); "
                         f"choose a tp that fits {sizes}.")


class TensorParallelExperts(GroupedExperts):
    """GroupedExperts holding this rank's columns of every expert: its outputs are partial
    sums, completed by one all-reduce over the replica's tp group."""

    def __init__(self, num_experts: int, dim: int, hidden_dim: int, group):
        super().__init__(num_experts, dim, hidden_dim)
        self.group = group

    def forward(self, routed_input: torch.Tensor, tokens_per_expert: torch.Tensor):
        out = super().forward(routed_input, tokens_per_expert)
        comm.all_reduce(out, group=self.group)
        return out


def split_experts(module, group) -> None:
    """Replace every MoE block's experts (still on the meta device) by the tp-split kind."""
    for block in module.layers.values():
        moe = getattr(block, "moe", None)
        if moe is not None:
            num_experts, dim, hidden = moe.experts.w1.shape
            with torch.device("meta"):
                moe.experts = TensorParallelExperts(num_experts, dim, hidden, group)


def rollout_dtypes(parallelism) -> tuple[torch.dtype, torch.dtype]:
    """(weights, LM head) dtypes of the rollout model: the learner's compute dtype
    (parallelism.param_dtype), the head float32 under parallelism.lm_head_fp32."""
    dtype = getattr(torch, parallelism.param_dtype)
    return dtype, torch.float32 if parallelism.lm_head_fp32 else dtype


def build_rollout_model(builder, args, device, tp: int = 1, tp_group=None,
                        dtypes: tuple = (torch.float32, torch.float32)) -> nn.Module:
    """An empty inference module in the rollout layout (whole, or this tp rank's slice:
    parallel/rollout_layout.py), its weights in dtypes = (weights, LM head) (rollout_dtypes);
    weight_sync fills it (copies cast the float32 buckets)."""
    with torch.device("meta"):
        module = builder(rollout_local_args(args, tp))
    if tp > 1:
        split_experts(module, tp_group)
    module.to_empty(device=device)
    module.to(dtypes[0])
    module.output.to(dtypes[1])
    module.tie_weights()
    module.init_buffers(device)
    if tp > 1:
        swap_row_parallel(module, tp_group)
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()
