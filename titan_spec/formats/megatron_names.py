"""Megatron-core's dist-checkpoint layout of a GPT model (the keys and global shapes its
`sharded_state_dict` gives, independent of its TP / PP degrees) <-> our per-layer tensors.

Megatron stacks every layer's tensor under one key with a leading layer axis
(`decoder.layers.self_attention.linear_qkv.weight` [L, ...]), fuses Q, K and V per query group
(rows: group 0's query heads, its key head, its value head, then group 1 ...), fuses the SwiGLU
gate and up projections (`linear_fc1` = [gate; up]), and names the pre-attention / pre-MLP
norms after the linear they precede."""

from __future__ import annotations

import torch

L = "decoder.layers."
_NORMS = {  # our per-layer suffix -> megatron key
    "attention_norm.weight": L + "self_attention.linear_qkv.layer_norm_weight",
    "ffn_norm.weight": L + "mlp.linear_fc1.layer_norm_weight",
    "attention.q_norm.weight": L + "self_attention.q_layernorm.weight",
    "attention.k_norm.weight": L + "self_attention.k_layernorm.weight",
    "attention.wo.weight": L + "self_attention.linear_proj.weight",
    "feed_forward.w2.weight": L + "mlp.linear_fc2.weight",
    "moe.router.weight": L + "mlp.router.weight",
}
QKV = L + "self_attention.linear_qkv.weight"
FC1 = L + "mlp.linear_fc1.weight"
EXPERT_FC1 = L + "mlp.experts.experts.linear_fc1.weight"
EXPERT_FC2 = L + "mlp.experts.experts.linear_fc2.weight"
TOP = {"tok_embeddings.weight": "embedding.word_embeddings.weight",
       "norm.weight": "decoder.final_layernorm.weight",
       "output.weight": "output_layer.weight"}


def layer_keys(args) -> dict[str, list[str]]:
    """megatron stacked key -> the per-layer suffixes of ours it is made of."""
    keys = {QKV: ["attention.wq.weight", "attention.wk.weight", "attention.wv.weight"]}
    for ours, theirs in _NORMS.items():
        if ours.startswith("feed_forward.") and args.is_moe:
            continue
        if ours.startswith("moe.") and not args.is_moe:
            continue
        keys[theirs] = [ours]
    if args.is_moe:
        keys[EXPERT_FC1] = ["moe.experts.w1", "moe.experts.w3"]
        keys[EXPERT_FC2] = ["moe.experts.w2"]
    else:
        keys[FC1] = ["feed_forward.w1.weight", "feed_forward.w3.weight"]
    return keys


def fuse(key: str, parts: list[torch.Tensor], args) -> torch.Tensor:
    """One layer's megatron tensor from our tensors of that layer."""
    if key == QKV:
        wq, wk, wv = parts
        groups, dim = args.n_kv_heads, wq.shape[-1]
        per_group = args.n_heads // groups * args.head_dim
        fused = torch.cat([wq.reshape(groups, per_group, dim),
                           wk.reshape(groups, args.head_dim, dim),
                           wv.reshape(groups, args.head_dim, dim)], dim=1)
        return fused.reshape(-1, dim)
    if key == FC1:
        return torch.cat(parts, dim=0)
    if key == EXPERT_FC1:  # ours [E, dim, hidden] x2 -> [E, 2 hidden, dim]
        return torch.cat([p.transpose(1, 2) for p in parts], dim=1)
    if key == EXPERT_FC2:  # ours [E, hidden, dim] -> [E, dim, hidden]
        return parts[0].transpose(1, 2)
    return parts[0]


def split(key: str, fused: torch.Tensor, args) -> list[torch.Tensor]:
    """fuse's inverse: one layer's megatron tensor -> our tensors of that layer."""
    if key == QKV:
        groups, dim = args.n_kv_heads, fused.shape[-1]
        per_group = args.n_heads // groups * args.head_dim
        blocks = fused.reshape(groups, per_group + 2 * args.head_dim, dim)
        q, k, v = blocks.split([per_group, args.head_dim, args.head_dim], dim=1)
        return [t.reshape(-1, dim).contiguous() for t in (q, k, v)]
    if key == FC1:
        return [t.contiguous() for t in fused.chunk(2, dim=0)]
    if key == EXPERT_FC1:
        return [t.transpose(1, 2).contiguous() for t in fused.chunk(2, dim=1)]
    if key == EXPERT_FC2:
        return [fused.transpose(1, 2).contiguous()]
    return [fused]
