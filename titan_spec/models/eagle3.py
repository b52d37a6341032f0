"""EAGLE-3 draft head (Li et al., 2025) as a plain nn.Module, in the architecture of the public
Qwen3 / Llama EAGLE-3 heads (the SpecForge / vLLM layout, formats/eagle3_hf.py).

At position j the head reads a hidden state and the embedding of token x_j and predicts x_{j+1}
over a reduced draft vocabulary. For the first draft the hidden state is fc(features of x_{j-1}):
the target's residual stream after three layers (low, mid, high) side by side, 3 x target_dim;
for later drafts it is the head's own previous output. One decoder layer (attention over
[norm(embedding), norm(hidden)], 2 x dim wide, no q/k norm) with its own KV cache, a final
norm and lm_head over the draft vocabulary. `d2t` maps a draft id to its target id
(target = draft + d2t[draft]); `t2d` marks the target ids the draft vocabulary holds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .heads import OneBlockHead
from .qwen3.args import Qwen3Args
from .qwen3.model import Attention, FeedForward, RMSNorm


def default_aux_layers(n_layers: int) -> tuple[int, int, int]:
    """The public recipes' feature layers: outputs of layers 1, L/2 - 1 and L - 4."""
    layers = (1, n_layers // 2 - 1, n_layers - 4)
    if n_layers < 5 or len(set(layers)) < 3:
        # Small targets: three distinct layers spread over the depth, the last one included.
        layers = tuple(sorted({0, max(n_layers // 2 - 1, 0), n_layers - 1}))
    return layers


@dataclass(frozen=True)
class Eagle3Shape:
    """What an EAGLE-3 head needs besides its block's shape (a Qwen3Args with n_layers = 1)."""

    target_dim: int
    draft_vocab_size: int
    aux_layers: tuple[int, ...]


class Eagle3Block(nn.Module):
    """The head's decoder layer ("midlayer" in the public layout)."""

    def __init__(self, args: Qwen3Args):
        super().__init__()
        self.hidden_norm = RMSNorm(args.dim, args.norm_eps)
        self.input_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, in_dim=2 * args.dim, qk_norm=False)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)

    def forward(self, hidden, token_embeds, cos, sin, positions, cache=None):
        fused = torch.cat([self.input_norm(token_embeds), self.hidden_norm(hidden)], dim=-1)
        x = hidden + self.attention(fused, cos, sin, positions, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class Eagle3Head(OneBlockHead):
    def __init__(self, args: Qwen3Args, shape: Eagle3Shape):
        super().__init__(args)
        if len(shape.aux_layers) != 3:
            raise ValueError(f"EAGLE-3 fuses three target layers, got {shape.aux_layers}.")
        self.shape = shape
        self.fc = nn.Linear(3 * shape.target_dim, args.dim, bias=False)
        self.block = Eagle3Block(args)
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, shape.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(shape.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(args.vocab_size, dtype=torch.bool))

    def project(self, features):
        """Target features [..., 3 x target_dim] -> the first draft's hidden input."""
        return self.fc(features.to(self.fc.weight.dtype))

    def forward(self, hidden, token_embeds, positions, kv_cache=None):
        """hidden [B, T, dim], token_embeds [B, T, dim] (x_j), positions [B, T] -> the block's
        output [B, T, dim]: the next draft's hidden input, and (through logits) x_{j+1}."""
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        cache = kv_cache.layer(0) if kv_cache is not None else None
        dtype = self.fc.weight.dtype
        return self.block(hidden.to(dtype), token_embeds.to(dtype), cos, sin, positions, cache)

    def draft_logits(self, output):
        """-> logits over the draft vocabulary [..., draft_vocab_size]."""
        return self.lm_head(self.norm(output))

    def target_ids(self) -> torch.Tensor:
        """The target id of every draft id [draft_vocab_size]."""
        return torch.arange(self.shape.draft_vocab_size, device=self.d2t.device) + self.d2t

    def to_target_vocab(self, draft_probs, vocab: int):
        """Draft-vocabulary probabilities [..., Vd] -> target-vocabulary ones [..., vocab],
        exactly: tokens outside the draft vocabulary get probability 0."""
        out = draft_probs.new_zeros(*draft_probs.shape[:-1], vocab)
        ids = self.target_ids()
        keep = ids < vocab
        return out.index_copy_(-1, ids[keep], draft_probs[..., keep])

    def to_draft_vocab(self, target_probs):
        """Target-vocabulary probabilities [..., V] -> the draft vocabulary's share of them,
        renormalised (the distillation target)."""
        ids = self.target_ids()
        inside = ids < target_probs.shape[-1]  # a padded id of the target has no probability
        picked = target_probs[..., ids.clamp(max=target_probs.shape[-1] - 1)] * inside
        return picked / picked.sum(-1, keepdim=True).clamp(min=1e-30)


def set_draft_vocab(head: Eagle3Head, target_ids: torch.Tensor) -> None:
    """Give the head the draft vocabulary `target_ids` [draft_vocab_size] (sorted, distinct)."""
    target_ids = torch.as_tensor(target_ids, dtype=torch.long).sort().values
    if target_ids.numel() != head.shape.draft_vocab_size or target_ids.unique().numel() != \
            target_ids.numel():
        raise ValueError(f"a draft vocabulary needs {head.shape.draft_vocab_size} distinct "
                         f"target ids, got {target_ids.numel()}.")
    device = head.d2t.device
    head.d2t.copy_(target_ids.to(device) - torch.arange(target_ids.numel(), device=device))
    head.t2d.zero_()
    head.t2d[target_ids.to(device)] = True


def frequent_tokens(token_ids: torch.Tensor, size: int, vocab: int) -> torch.Tensor:
    """The `size` most frequent ids of `token_ids` (ties and unseen ids by lowest id): the
    public recipes' draft vocabulary."""
    counts = torch.bincount(token_ids.flatten(), minlength=vocab)[:vocab].double()
    order = torch.argsort(-counts * (vocab + 1) + torch.arange(vocab, dtype=torch.double))
    return order[:size].sort().values


def build_eagle3_head(target_args: Qwen3Args, seed: int = 0, device="cpu",
                      draft_vocab_size: int | None = None,
                      aux_layers: tuple[int, ...] | None = None) -> Eagle3Head:
    """A head shaped like one dense block of the target, the whole vocabulary by default."""
    from titan_spec.models.init import materialize_and_init

    args = target_args.with_overrides(n_layers=1, num_experts=0, top_k=0, moe_hidden_dim=0,
                                      tie_embeddings=False)
    shape = Eagle3Shape(target_args.dim, draft_vocab_size or target_args.vocab_size,
                        tuple(aux_layers or default_aux_layers(target_args.n_layers)))
    check_aux_layers(shape.aux_layers, target_args.n_layers)
    with torch.device("meta"):
        head = Eagle3Head(args, shape)
    head = materialize_and_init(head, torch.device(device), seed)
    set_draft_vocab(head, torch.arange(shape.draft_vocab_size))
    return head


def check_aux_layers(layers, n_layers: int) -> None:
    if len(layers) != 3 or len(set(layers)) != 3 or min(layers) < 0 or max(layers) >= n_layers:
        raise ValueError(f"EAGLE-3 feature layers {tuple(layers)}: need three distinct layer "
                         f"indices in [0, {n_layers}) of the target.")
