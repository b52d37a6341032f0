from titan_spec.models.registry import ModelSpec, register

from . import hf_adapter
from .args import FLAVORS, Qwen3Args
from .model import Qwen3Model
from .parallelize import parallelize_qwen3

register(ModelSpec(
    name="qwen3",
    flavors=FLAVORS,
    builder=Qwen3Model,
    parallelize=parallelize_qwen3,
    from_hf=hf_adapter.from_hf,
    to_hf=hf_adapter.to_hf,
))

__all__ = ["FLAVORS", "Qwen3Args", "Qwen3Model", "parallelize_qwen3"]
