"""Models: plain nn.Modules plus a registry. `build_model` returns an initialised module on
CPU (or a parameter-free one on the meta device, to be parallelised and materialised)."""

from __future__ import annotations

import torch

from . import qwen3  # noqa: F401  (registers "qwen3")
from .registry import ModelSpec, get_model_spec, register


def build_model(name: str, flavor: str, *, device="cpu", seed: int = 0, **overrides):
    return build_model_from_args(name, get_model_spec(name).args(flavor, **overrides),
                                 device=device, seed=seed)


def build_model_from_args(name: str, args, *, device="meta", seed: int = 0):
    """The family's model of these args: parameter-free on the meta device (to be
    parallelised, then materialised), or initialised from `seed` on `device`."""
    with torch.device("meta"):
        model = get_model_spec(name).builder(args)
    if str(device) == "meta":
        return model
    from titan_spec.models.init import materialize_and_init

    return materialize_and_init(model, torch.device(device), seed)


__all__ = ["ModelSpec", "build_model", "build_model_from_args", "get_model_spec", "register"]
