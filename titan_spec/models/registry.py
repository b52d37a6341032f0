"""TrainSpec-style registry: model name -> flavors, builder, HF adapter. (Its parallelize
function is registered on the parallel side: titan_spec/parallel/plans.py.)"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

_REGISTRY: dict[str, "ModelSpec"] = {}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    flavors: dict
    builder: Callable  # args -> nn.Module (plain, no parallelism)
    hf: "HFAdapter"  # the one mapping to / from Hugging Face checkpoints

    def args(self, flavor: str, **overrides):
        if flavor not in self.flavors:
            close = difflib.get_close_matches(flavor, self.flavors, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown flavor '{flavor}' for model '{self.name}'; known: "
                             f"{', '.join(self.flavors)}.{hint}")
        return self.flavors[flavor].with_overrides(**overrides)


@dataclass(frozen=True)
class HFAdapter:
    """A model family's Hugging Face mapping, used by runs, tools and tests alike."""

    sources: Callable  # args -> {our name: Source (where it lives in an HF checkpoint)}
    hf_keys: Callable  # args -> every HF tensor name a checkpoint holds
    from_hf: Callable  # (hf_state_dict, args) -> our state dict
    to_hf: Callable  # (our state dict, args) -> hf_state_dict
    to_hf_items: Callable  # (our name, tensor, args) -> [(hf name, tensor)]
    args_from_config: Callable  # (config.json dict, where) -> args
    config_from_args: Callable  # (args, dtype name) -> config.json dict


def register(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


def get_model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}'; registered: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]
