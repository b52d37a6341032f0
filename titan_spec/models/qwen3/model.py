"""Qwen3 decoder (dense and MoE) as plain nn.Modules: no parallelism in here.

Attention takes absolute `positions` [B, T] and an optional per-layer KV cache, so the same
forward serves training (T = sequence, causal), decoding (T = 1) and speculative verification
(T = k+1 new tokens at per-sequence cache offsets)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .args import Qwen3Args
from .moe import MoE


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


def rope_tables(head_dim: int, max_seq_len: int, theta: float, device=None):
    """cos/sin tables [max_seq_len, head_dim] in the half-rotation layout of HF Qwen3 weights."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, device=device).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, T, H, D]; cos/sin: [B, T, D]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


class Attention(nn.Module):
    """Qwen3 attention; `in_dim` and `qk_norm=False` give the Llama-style variant of draft
    heads that attend over a wider input (models/eagle3.py)."""

    def __init__(self, args: Qwen3Args, in_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        self.head_dim = args.head_dim
        in_dim = in_dim or args.dim
        self.wq = nn.Linear(in_dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(in_dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(in_dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        if qk_norm:
            self.q_norm = RMSNorm(args.head_dim, args.norm_eps)
            self.k_norm = RMSNorm(args.head_dim, args.norm_eps)
        self.fp64 = args.attention_fp64

    def project(self, x, cos, sin):
        """x [B, T, in_dim] -> q, k (normed, rotated) and v, each [B, T, heads, head_dim]."""
        batch, seq, _ = x.shape
        # Head counts come from the (possibly tensor-parallel, local) projection widths.
        q = self.wq(x).view(batch, seq, -1, self.head_dim)
        k = self.wk(x).view(batch, seq, -1, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.wv(x).view(batch, seq, -1, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, positions, cache=None):
        batch, seq, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        mask = None
        if cache is not None:
            k, v, key_positions = cache.update(k, v, positions)  # [B, S, Hkv, D], [S]
            k, v = k.to(q.dtype), v.to(q.dtype)  # the cache may hold another dtype
            mask = key_positions.view(1, 1, -1) <= positions.unsqueeze(-1)  # [B, T, S]
            mask = mask.unsqueeze(1)  # [B, 1, T, S]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.fp64:
            q, k, v = q.double(), k.double(), v.double()
        # Grouped-query attention without copying K / V per query head.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=q.shape[1] != k.shape[1])
        return self.wo(out.to(x.dtype).transpose(1, 2).reshape(batch, seq, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: Qwen3Args):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        if args.is_moe:
            self.moe = MoE(args.dim, args.moe_hidden_dim, args.num_experts, args.top_k,
                           args.norm_topk_prob)
        else:
            self.feed_forward = FeedForward(args.dim, args.hidden_dim)

    def forward(self, x, cos, sin, positions, cache=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, positions, cache)
        ffn = self.moe if hasattr(self, "moe") else self.feed_forward
        return x + ffn(self.ffn_norm(x))


class Qwen3Model(nn.Module):
    def __init__(self, args: Qwen3Args):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # ModuleDict keeps parameter names stable ("layers.3...") whatever wraps the blocks.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(args) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.tie_weights()
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens, positions=None, kv_cache=None, return_hidden: bool = False,
                hidden_layers: tuple[int, ...] | None = None, output_head=None):
        """tokens [B, T]; positions [B, T] absolute (default 0..T-1); kv_cache: per-layer caches
        (rollout/kv_cache.py). Returns logits [B, T, V], and with return_hidden the final
        hidden states [B, T, dim], or with hidden_layers the outputs of those layers side by
        side [B, T, len(hidden_layers) * dim] (EAGLE-3's features). output_head: a callable
        from final hidden states to logits used instead of `output` (e.g. some of its rows)."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        h = self.tok_embeddings(tokens)
        kept = {}
        for name, layer in self.layers.items():
            cache = kv_cache.layer(int(name)) if kv_cache is not None else None
            h = layer(h, cos, sin, positions, cache)
            if hidden_layers and int(name) in hidden_layers:
                kept[int(name)] = h
        h = self.norm(h)
        # A float32 head under bf16 weights (parallelism.lm_head_fp32) takes its input in fp32.
        logits = (output_head or self.output)(h.to(self.output.weight.dtype))
        if not return_hidden:
            return logits
        if hidden_layers:
            return logits, torch.cat([kept[index] for index in hidden_layers], dim=-1)
        return logits, h

    def tie_weights(self) -> None:
        """Share the embedding with the output head (again after to_empty(), which makes new
        Parameters)."""
        if self.args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the MoE load-balancing losses of the last forward, times the config's coef."""
        losses = [layer.moe.aux_loss for layer in self.layers.values() if hasattr(layer, "moe")]
        losses = [loss for loss in losses if loss is not None]
        if not losses:
            return None
        return self.args.aux_loss_coef * torch.stack(losses).sum()

    # ---- initialisation: a function of (seed, parameter name) only, so every parallel layout
    # ---- starts from bit-identical weights and losses can be compared across layouts.
    def init_std(self, name: str) -> float | None:
        """Std of the normal init for a parameter, or None for ones (norm weights)."""
        if name.endswith("norm.weight"):
            return None
        if name.startswith("output."):
            return self.args.dim ** -0.5
        if name.endswith(("wo.weight", "w2.weight", "moe.experts.w2")):
            return 0.02 / math.sqrt(2 * self.args.n_layers)
        return 0.02

    def init_buffers(self, device) -> None:
        cos, sin = rope_tables(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta,
                               device=device)
        self.rope_cos, self.rope_sin = cos, sin
