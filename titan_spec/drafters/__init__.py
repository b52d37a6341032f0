"""Drafters behind one protocol (drafters/base.py), built by name from a registry."""

from __future__ import annotations

import difflib

from .base import Drafter, DraftRequest
from .draft_model import DraftModelDrafter
from .eagle import EagleDrafter, MtpDrafter
from .eagle3 import Eagle3Drafter
from .ngram import NgramDrafter

DRAFTERS: dict[str, type] = {"draft_model": DraftModelDrafter, "eagle": EagleDrafter,
                             "eagle3": Eagle3Drafter, "mtp": MtpDrafter, "ngram": NgramDrafter}


def build_drafter(kind: str, target=None, **kwargs) -> Drafter:
    """kind in DRAFTERS; `target` is the policy (used by drafters that read its states)."""
    if kind not in DRAFTERS:
        close = difflib.get_close_matches(kind, DRAFTERS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown drafter '{kind}'; available: {', '.join(DRAFTERS)}.{hint}")
    cls = DRAFTERS[kind]
    if cls is DraftModelDrafter and "model" not in kwargs:
        raise ValueError("the draft_model drafter needs model=<a small causal LM with the "
                         "target's tokenizer>.")
    if cls in (EagleDrafter, Eagle3Drafter, MtpDrafter):
        return _head_drafter(cls, kind, target, **kwargs)
    return cls(**kwargs)


def _head_drafter(cls, kind: str, target, seed: int = 0, num_heads: int = 2, **kwargs):
    from titan_spec.models.heads import build_draft_head

    if target is None:
        raise ValueError(f"the {kind} drafter reads the target's hidden states: pass target=.")
    device = target.rope_cos.device
    if cls is Eagle3Drafter:
        from titan_spec.models.eagle3 import build_eagle3_head

        head = kwargs.pop("head", None) or build_eagle3_head(target.args, seed, device)
        return cls(target, head, **kwargs)
    if cls is EagleDrafter:
        head = kwargs.pop("head", None) or build_draft_head(target.args, seed, device)
        return cls(target, head, **kwargs)
    heads = kwargs.pop("heads", None) or [build_draft_head(target.args, seed + i, device)
                                          for i in range(num_heads)]
    return cls(target, heads, **kwargs)


__all__ = ["DRAFTERS", "DraftRequest", "Drafter", "build_drafter"]
