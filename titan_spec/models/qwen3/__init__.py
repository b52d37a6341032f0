from titan_spec.models.registry import ModelSpec, register

from . import hf_adapter
from .args import FLAVORS, Qwen3Args
from .model import Qwen3Model

register(ModelSpec(
    name="qwen3",
    flavors=FLAVORS,
    builder=Qwen3Model,
    from_hf=hf_adapter.from_hf,
    to_hf=hf_adapter.to_hf,
))

__all__ = ["FLAVORS", "Qwen3Args", "Qwen3Model"]
