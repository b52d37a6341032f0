from titan_spec.models.registry import HFAdapter, ModelSpec, register

from . import hf_adapter
from .args import FLAVORS, Qwen3Args
from .hf_config import args_from_hf_config, hf_config_from_args
from .model import Qwen3Model

register(ModelSpec(
    name="qwen3",
    flavors=FLAVORS,
    builder=Qwen3Model,
    hf=HFAdapter(
        sources=hf_adapter.sources, hf_keys=hf_adapter.hf_keys, from_hf=hf_adapter.from_hf,
        to_hf=hf_adapter.to_hf, to_hf_items=hf_adapter.to_hf_items,
        args_from_config=args_from_hf_config, config_from_args=hf_config_from_args),
))

__all__ = ["FLAVORS", "Qwen3Args", "Qwen3Model"]
