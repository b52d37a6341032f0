"""Seconds of one forward on one replica of a rollout (or one learner pass), from bytes moved
and FLOPs done: a roofline per forward (the larger of memory time and compute time) plus the
fixed costs of the hardware profile. Model shapes are `Qwen3Args`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.simulate.hardware import Hardware


@dataclass(frozen=True)
class Shape:
    """What a forward reads and computes, per token and per context token."""

    n_layers: int
    dense_params: float  # parameters every token touches (attention, norms, dense MLP, heads)
    expert_params: float  # parameters of ONE routed expert in ONE layer
    num_experts: int
    top_k: int
    active_params: float  # per token
    # FLOPs per (query token, context token): 4 * layers * heads * head_dim
    attn_flops_per_ctx: float
    kv_bytes_per_token: float  # K and V of every layer, in the cache dtype
    kv_split_max: int  # tensor parallelism splits the KV cache at most this many ways (KV heads)
    dim: int
    vocab: int = 0  # rows of the LM head: the sampler reads and writes fp32 rows this wide


def target_shape(args, dtype_bytes: float) -> Shape:
    """The input embedding is a lookup (a few rows read, no FLOPs): only the LM head counts,
    which is the same table when the embeddings are tied."""
    expert = 3 * args.dim * args.moe_hidden_dim if args.num_experts else 0.0
    lookup_only = 0 if args.tie_embeddings else args.vocab_size * args.dim
    total = args.num_params() - lookup_only
    dense = total - args.n_layers * args.num_experts * expert
    return Shape(n_layers=args.n_layers, dense_params=dense, expert_params=expert,
                 num_experts=args.num_experts, top_k=args.top_k,
                 active_params=args.num_active_params() - lookup_only,
                 attn_flops_per_ctx=4.0 * args.n_layers * args.n_heads * args.head_dim,
                 kv_bytes_per_token=2.0 * args.n_layers * args.n_kv_heads * args.head_dim
                 * dtype_bytes, kv_split_max=args.n_kv_heads, dim=args.dim,
                 vocab=args.vocab_size)


def weight_bytes_read(shape: Shape, tokens: float, dtype_bytes: float) -> float:
    """Weights one forward of `tokens` tokens reads: every dense weight, and each routed expert
    that at least one token picks (top_k of num_experts each, uniformly: the expected count)."""
    read = shape.dense_params
    if shape.num_experts:
        untouched = (1.0 - shape.top_k / shape.num_experts) ** tokens
        read += shape.n_layers * shape.num_experts * (1.0 - untouched) * shape.expert_params
    return read * dtype_bytes


# fp32 passes over the [tokens, vocab] rows after the LM head: logits written, probabilities
# read and written, read again by the (rejection) sampler.
SAMPLER_PASSES = 4


def forward_s(shape: Shape, hw: Hardware, *, tp: int, sequences: float, width: int,
              kv_tokens: float, dtype_bytes: float, flop_eff: float | None = None) -> float:
    """One forward of `sequences` sequences, `width` new tokens each, over `kv_tokens` cached
    tokens in all, on a replica of `tp` devices (numbers or numpy arrays of iterations)."""
    tokens = sequences * width
    memory = (weight_bytes_read(shape, tokens, dtype_bytes) / tp
              + kv_tokens * shape.kv_bytes_per_token / min(tp, shape.kv_split_max)
              + SAMPLER_PASSES * tokens * shape.vocab * 4.0 / tp)
    flops = (2.0 * shape.active_params * tokens
             + shape.attn_flops_per_ctx * kv_tokens * width) / tp
    eff = hw.decode_flop_eff if flop_eff is None else flop_eff
    seconds = np.maximum(memory / (hw.hbm_gb_s * 1e9 * hw.bw_eff), flops / (hw.flops * eff))
    if tp > 1:  # two all-reduces of the activations per layer
        payload = tokens * shape.dim * dtype_bytes * 2.0 * (tp - 1) / tp
        seconds += 2 * shape.n_layers * (hw.collective_latency_s + payload / (hw.nvlink_gb_s * 1e9))
    seconds = seconds + shape.n_layers * hw.layer_overhead_s
    return np.where(np.asarray(sequences) > 0, seconds, 0.0)


def learner_pass_s(shape: Shape, hw: Hardware, *, tokens: float, mean_context: float,
                   devices: int, backward: bool, recompute: bool,
                   dtype_bytes: float = 2.0) -> float:
    """The learner's forward (logprob recompute) or forward + backward (training) over `tokens`
    tokens spread over `devices`, at the profile's training MFU; causal attention sees half
    of each sequence on average. MoE layers add their expert-parallel all-to-all (each token's
    hidden state to its top_k experts and back, every pass) over NVLink, not overlapped."""
    passes = 1.0 + (2.0 if backward else 0.0) + (1.0 if backward and recompute else 0.0)
    per_token = 2.0 * shape.active_params + shape.attn_flops_per_ctx * mean_context / 2.0
    mfu = hw.train_mfu_moe if shape.num_experts else hw.train_mfu
    seconds = passes * per_token * tokens / (devices * hw.flops * mfu)
    if shape.num_experts:
        a2a_bytes = passes * shape.n_layers * 2 * shape.top_k * shape.dim * dtype_bytes * tokens
        seconds += a2a_bytes / (devices * hw.nvlink_gb_s * 1e9)
    return seconds
