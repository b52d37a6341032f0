"""torchtitan's Qwen3 parameter names (as its own state-dict adapter in torchtitan 0.3 maps
them from HF) <-> ours. Dense layers differ only in the fused-QKV module's path and the head's
name; MoE experts are stacked there as [E, out, in] (`w1_EFD`, `w2_EDF`), ours as [E, in, out]."""

from __future__ import annotations

import re

from .store import Entry

_TO_TITAN = [  # (our name's pattern, torchtitan's name)
    (r"output\.weight", "lm_head.weight"),
    (r"layers\.(\d+)\.attention\.(wq|wk|wv)\.weight", r"layers.\1.attention.qkv_linear.\2.weight"),
    (r"layers\.(\d+)\.moe\.router\.weight", r"layers.\1.moe.router.gate.weight"),
]
_FROM_TITAN = [  # (torchtitan's pattern, our name)
    (r"lm_head\.weight", "output.weight"),
    (r"layers\.(\d+)\.attention\.qkv_linear\.(wq|wk|wv)\.weight", r"layers.\1.attention.\2.weight"),
    (r"layers\.(\d+)\.moe\.router\.gate\.weight", r"layers.\1.moe.router.weight"),
]
_EXPERTS = {"w1": "w1_EFD", "w3": "w3_EFD", "w2": "w2_EDF"}
_OURS_EXPERT = re.compile(r"layers\.(\d+)\.moe\.experts\.(w1|w2|w3)")
_TITAN_EXPERT = re.compile(r"layers\.(\d+)\.moe\.routed_experts\.inner_experts\.(\w+)")
# torchtitan keeps MoE load-balancing state next to the weights; it is not a weight.
_TITAN_BUFFERS = re.compile(r".*\.moe\.(expert_bias|tokens_per_expert)")


def _transposed(entry: Entry) -> Entry:
    shape = (entry.shape[0], entry.shape[2], entry.shape[1])
    return Entry(shape, entry.dtype, lambda: entry.read().transpose(1, 2).contiguous())


def to_torchtitan(name: str, entry: Entry) -> tuple[str, Entry]:
    expert = _OURS_EXPERT.fullmatch(name)
    if expert:
        layer, weight = expert.groups()
        return (f"layers.{layer}.moe.routed_experts.inner_experts.{_EXPERTS[weight]}",
                _transposed(entry))
    for pattern, theirs in _TO_TITAN:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, theirs, name), entry
    return name, entry


def from_torchtitan(key: str, entry: Entry) -> tuple[str, Entry] | None:
    """A torchtitan key -> (our name, entry); None for what is not a model weight (optimizer,
    schedulers, data loader, MoE balancing buffers)."""
    if _TITAN_BUFFERS.fullmatch(key) or not re.match(r"(tok_embeddings|layers|norm|lm_head)\.",
                                                     key):
        return None
    expert = _TITAN_EXPERT.fullmatch(key)
    if expert:
        layer, weight = expert.groups()
        ours = {v: k for k, v in _EXPERTS.items()}[weight]
        return f"layers.{layer}.moe.experts.{ours}", _transposed(entry)
    for pattern, ours in _FROM_TITAN:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, ours, key), entry
    return key, entry
