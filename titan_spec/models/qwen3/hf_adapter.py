"""Hugging Face Qwen3 / Qwen3-MoE state-dict names <-> titan-spec names.

Our RoPE uses HF's half-rotation layout, so q/k weights need no permutation. HF stores one
Linear per expert ([out, in]); we store experts stacked as [E, in, out]."""

from __future__ import annotations

import re

import torch

_DENSE = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "self_attn.q_norm.weight": "attention.q_norm.weight",
    "self_attn.k_norm.weight": "attention.k_norm.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.gate.weight": "moe.router.weight",
}
_EXPERT = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EXPERT_RE = re.compile(r"mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


def from_hf(hf_state: dict[str, torch.Tensor], args) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for key, tensor in hf_state.items():
        if key in _DENSE:
            out[_DENSE[key]] = tensor
            continue
        match = _LAYER_RE.fullmatch(key)
        if match is None:
            raise ValueError(f"unexpected Hugging Face weight '{key}' for a Qwen3 model.")
        layer, rest = match.groups()
        expert = _EXPERT_RE.fullmatch(rest)
        if expert:
            experts.setdefault((int(layer), _EXPERT[expert.group(2)]), {})[
                int(expert.group(1))] = tensor.t()
        elif rest in _LAYER:
            out[f"layers.{layer}.{_LAYER[rest]}"] = tensor
        else:
            raise ValueError(f"unexpected Hugging Face weight '{key}' for a Qwen3 model.")
    for (layer, name), by_index in experts.items():
        if sorted(by_index) != list(range(args.num_experts)):
            raise ValueError(f"layer {layer} {name}: expected experts 0..{args.num_experts - 1}, "
                             f"found {sorted(by_index)}.")
        out[f"layers.{layer}.moe.experts.{name}"] = torch.stack(
            [by_index[i] for i in range(args.num_experts)])
    if args.tie_embeddings:
        out.pop("output.weight", None)
    return out


def to_hf(state: dict[str, torch.Tensor], args) -> dict[str, torch.Tensor]:
    dense = {v: k for k, v in _DENSE.items()}
    layer_map = {v: k for k, v in _LAYER.items()}
    expert_map = {v: k for k, v in _EXPERT.items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in dense:
            out[dense[key]] = tensor
            continue
        _, layer, rest = key.split(".", 2)
        if rest.startswith("moe.experts."):
            hf_name = expert_map[rest.rsplit(".", 1)[1]]
            for index in range(tensor.shape[0]):
                out[f"model.layers.{layer}.mlp.experts.{index}.{hf_name}.weight"] = (
                    tensor[index].t().contiguous())
        else:
            out[f"model.layers.{layer}.{layer_map[rest]}"] = tensor
    if args.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out
