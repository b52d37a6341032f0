"""Draft heads that read the target's hidden states (plain nn.Modules, no parallelism).

DraftHead (EAGLE-style, also one MTP depth in DeepSeek-V3's form): at position j it combines the
target's final hidden state h_{j-1} with the embedding of token x_j, runs one decoder block with
its own KV cache, and produces a predicted hidden state; the TARGET's output head turns that into
the distribution of x_{j+1}. Embedding and output head are the target's, passed in at call time,
so the head owns only fc + one block + a norm."""

from __future__ import annotations

import torch
from torch import nn

from .qwen3.args import Qwen3Args
from .qwen3.model import RMSNorm, TransformerBlock, rope_tables


class OneBlockHead(nn.Module):
    """What every draft head shares: one decoder block `self.block` with its own RoPE tables,
    sized for a KV cache of one layer, initialised like a one-layer model."""

    def __init__(self, args: Qwen3Args):
        super().__init__()
        self.args = args
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def layers(self):  # KVCache.for_model sizing: one block
        return {"0": self.block}

    def init_std(self, name: str) -> float | None:
        if name.endswith("norm.weight"):
            return None
        if name.endswith(("wo.weight", "w2.weight")):
            return 0.02 / 2**0.5
        return 0.02

    def init_buffers(self, device) -> None:
        cos, sin = rope_tables(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta,
                               device=device)
        self.rope_cos, self.rope_sin = cos, sin


class DraftHead(OneBlockHead):
    def __init__(self, args: Qwen3Args):
        super().__init__(args)
        self.hidden_norm = RMSNorm(args.dim, args.norm_eps)
        self.embed_norm = RMSNorm(args.dim, args.norm_eps)
        self.fc = nn.Linear(2 * args.dim, args.dim, bias=False)
        self.block = TransformerBlock(args)
        self.norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, prev_hidden, token_embeds, positions, kv_cache=None):
        """prev_hidden [B, T, dim] (h_{j-1}), token_embeds [B, T, dim] (x_j), positions [B, T]
        -> predicted hidden [B, T, dim] (feed it to the target's output head)."""
        # The head keeps its own dtype (fp32 under a bf16 target): inputs come in the target's.
        dtype = self.fc.weight.dtype
        fused = self.fc(torch.cat([self.hidden_norm(prev_hidden.to(dtype)),
                                   self.embed_norm(token_embeds.to(dtype))], dim=-1))
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        cache = kv_cache.layer(0) if kv_cache is not None else None
        return self.norm(self.block(fused, cos, sin, positions, cache))


def build_draft_head(target_args: Qwen3Args, seed: int = 0, device="cpu") -> DraftHead:
    """A head shaped like one dense block of the target (MoE targets get a dense block)."""
    from titan_spec.models.init import materialize_and_init

    args = target_args.with_overrides(n_layers=1, num_experts=0, top_k=0, moe_hidden_dim=0)
    with torch.device("meta"):
        head = DraftHead(args)
    return materialize_and_init(head, torch.device(device), seed)
