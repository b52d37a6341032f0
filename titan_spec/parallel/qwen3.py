"""parallelize_qwen3: TP -> EP -> activation checkpointing -> compile -> FSDP2, applied in place
to a plain (meta-device) Qwen3Model. The order matters: FSDP2 must see the DTensor parameters
that TP/EP created so it shards on top of them (2-D)."""

from __future__ import annotations

import torch

from .activation_checkpoint import apply_activation_checkpointing
from .expert_parallel import apply_expert_parallel
from .fsdp import apply_fsdp
from .tensor_parallel import apply_tensor_parallel


def parallelize_qwen3(model, parallel_dims, parallelism, device_type: str):
    """The layout was checked against the model by titan_spec/preflight.py."""
    if parallel_dims.tp_enabled:
        apply_tensor_parallel(model, parallel_dims.mesh("tp"))
    if parallel_dims.ep_enabled:
        assert model.args.is_moe and model.args.num_experts % parallel_dims.ep == 0
        apply_expert_parallel(model, parallel_dims.mesh("ep"))
    if parallelism.activation_checkpoint == "full":
        apply_activation_checkpointing(model)
    if parallelism.compile and device_type == "cuda":
        for name, block in list(model.layers.items()):
            model.layers[name] = torch.compile(block)
    if parallel_dims.dp_enabled:
        apply_fsdp(model, parallel_dims, parallelism.param_dtype, parallelism.reduce_dtype,
                   parallelism.lm_head_fp32)
    return model
