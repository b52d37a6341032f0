"""The one mapping between Hugging Face Qwen3 / Qwen3-MoE weights and titan-spec's, used by the
run (loading slices into shards, exporting), the conversion tool and the tests.

Our RoPE uses HF's half-rotation layout, so q/k weights need no permutation. HF stores one
Linear per expert ([out, in]); we store experts stacked as [E, in, out]. transformers >= 5 holds
experts fused in memory (`mlp.experts.gate_up_proj` [E, 2I, H], `down_proj` [E, H, I]) but writes
the per-expert layout to disk; `from_hf` accepts both."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_TOP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.q_norm.weight": "self_attn.q_norm.weight",
    "attention.k_norm.weight": "self_attn.k_norm.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "moe.router.weight": "mlp.gate.weight",
}
_DENSE_ONLY = ("feed_forward.",)
_MOE_ONLY = ("moe.",)
_EXPERT = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_FUSED_RE = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")


@dataclass(frozen=True)
class Source:
    """Where one of our tensors lives in an HF checkpoint: one tensor under another name, or
    (experts) one [out, in] tensor per expert that we hold stacked and transposed."""

    hf_keys: tuple[str, ...]
    stacked: bool = False

    def assemble(self, read) -> torch.Tensor:
        """read(hf_key) -> tensor; -> our full tensor."""
        if not self.stacked:
            return read(self.hf_keys[0])
        return torch.stack([read(key).t() for key in self.hf_keys])

    def read_box(self, read_slice, offsets, sizes) -> torch.Tensor:
        """Only the box [offsets, offsets + sizes) of our tensor, from read_slice(hf_key,
        slices) reads of the HF tensors (each rank reads just what its shard holds)."""
        box = tuple(slice(o, o + n) for o, n in zip(offsets, sizes, strict=True))
        if not self.stacked:
            return read_slice(self.hf_keys[0], box)
        experts, rows, cols = box  # ours: [E, in, out]; each HF expert: [out, in]
        keys = self.hf_keys[experts]
        if not keys:
            return torch.empty(tuple(sizes))
        return torch.stack([read_slice(key, (cols, rows)).t() for key in keys])


def sources(args) -> dict[str, Source]:
    """Our parameter name -> its Source, for a model of these args (the one mapping)."""
    out = {ours: Source((hf,)) for ours, hf in _TOP.items()}
    if args.tie_embeddings:
        # The head is the embedding; tied HF checkpoints usually omit lm_head.weight.
        out["output.weight"] = Source((_TOP["tok_embeddings.weight"],))
    skip = _DENSE_ONLY if args.is_moe else _MOE_ONLY
    for layer in range(args.n_layers):
        prefix = f"model.layers.{layer}."
        for ours, hf in _LAYER.items():
            if not ours.startswith(skip):
                out[f"layers.{layer}.{ours}"] = Source((prefix + hf,))
        if args.is_moe:
            for ours, hf in _EXPERT.items():
                keys = tuple(f"{prefix}mlp.experts.{e}.{hf}.weight"
                             for e in range(args.num_experts))
                out[f"layers.{layer}.moe.experts.{ours}"] = Source(keys, stacked=True)
    return out


def hf_keys(args) -> set[str]:
    """Every HF tensor a checkpoint of these args holds (lm_head optional when tied)."""
    keys = {key for source in sources(args).values() for key in source.hf_keys}
    if not args.tie_embeddings:
        keys.add(_TOP["output.weight"])
    return keys


def unfuse_experts(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 5 in-memory experts (fused gate_up [E, 2I, H], down [E, H, I]) -> the
    per-expert on-disk keys. Other keys pass through."""
    out = {}
    for key, tensor in hf_state.items():
        match = _FUSED_RE.fullmatch(key)
        if match is None:
            out[key] = tensor
            continue
        layer, kind = match.groups()
        prefix = f"model.layers.{layer}.mlp.experts"
        for expert, weight in enumerate(tensor.unbind(0)):
            if kind == "down_proj":
                out[f"{prefix}.{expert}.down_proj.weight"] = weight
            else:
                gate, up = weight.chunk(2, dim=0)
                out[f"{prefix}.{expert}.gate_proj.weight"] = gate
                out[f"{prefix}.{expert}.up_proj.weight"] = up
    return out


def from_hf(hf_state: dict[str, torch.Tensor], args) -> dict[str, torch.Tensor]:
    """A whole HF state dict (on-disk or transformers-5 in-memory layout) -> ours, with every
    key our model's state_dict() lists (output.weight too when tied)."""
    hf_state = unfuse_experts(hf_state)
    unknown = sorted(set(hf_state) - hf_keys(args) - {_TOP["output.weight"]})
    if unknown:
        raise ValueError(f"unexpected Hugging Face weight '{unknown[0]}' for a Qwen3 model of "
                         f"this config ({len(unknown)} unknown in all).")

    def read(key):
        if key not in hf_state:
            raise ValueError(f"Hugging Face state dict has no '{key}'.")
        return hf_state[key]

    return {ours: source.assemble(read) for ours, source in sources(args).items()}


def to_hf_items(name: str, tensor: torch.Tensor, args):
    """Our tensor `name` -> its (hf_key, tensor) pairs; nothing for the tied head."""
    if args.tie_embeddings and name == "output.weight":
        return []
    source = sources(args)[name]
    if not source.stacked:
        return [(source.hf_keys[0], tensor)]
    return [(key, tensor[e].t().contiguous()) for e, key in enumerate(source.hf_keys)]


def to_hf(state: dict[str, torch.Tensor], args) -> dict[str, torch.Tensor]:
    return {key: value for name, tensor in state.items()
            for key, value in to_hf_items(name, tensor, args)}
