"""FSDP2 (fully_shard) per transformer block, experts separately on their own mesh.

Gradients are SUMMED across data-parallel ranks (divide factor 1): the loss on each rank is
already divided by the global number of valid tokens, so a sum gives the exact global mean,
whatever the layout. gloo has no PREMUL_SUM, hence force-sum reductions."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Shard

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _sum_gradients(module: FSDPModule) -> None:
    module.set_gradient_divide_factor(1.0)
    module.set_force_sum_reduction_for_comms(True)


def _expert_placement(experts: nn.Module, local_experts: int, shards: int):
    """Shard experts on dim 0 when every rank gets the same number of whole experts. Otherwise
    (235B: 16 local experts over 24 ranks) dim-0 chunks would leave ranks empty, so shard the
    expert hidden dim (w1 / w3 [E, dim, hidden]: 2, w2 [E, hidden, dim]: 1), or failing that
    another dim that splits evenly: FSDP2 allows uneven splits on dim 0 only."""
    if local_experts % shards == 0:
        return None
    hidden = {id(experts.w1): 2, id(experts.w3): 2, id(experts.w2): 1}

    def placement(param) -> Shard:
        for dim in (hidden.get(id(param), 1), 1, 2):
            if param.shape[dim] % shards == 0:
                return Shard(dim)
        return Shard(0)
    return placement


def shard_head_fp32(model: nn.Module, mesh):
    """The LM head as its own FSDP2 unit in float32: its input (the bf16 final norm's output)
    is cast up, its logits stay float32."""
    if model.output.weight is model.tok_embeddings.weight:
        raise ValueError("parallelism.lm_head_fp32 needs an untied LM head; this model shares it "
                         "with the embedding (tie_word_embeddings): set "
                         "parallelism.lm_head_fp32=false.")
    policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    return fully_shard(model.output, mesh=mesh, mp_policy=policy, reshard_after_forward=False)


def apply_fsdp(model: nn.Module, parallel_dims, param_dtype: str, reduce_dtype: str,
               lm_head_fp32: bool = False) -> None:
    policy = MixedPrecisionPolicy(param_dtype=_DTYPES[param_dtype],
                                  reduce_dtype=_DTYPES[reduce_dtype])
    mesh = parallel_dims.fsdp_mesh()
    sharded = []
    for block in model.layers.values():
        inner = getattr(block, "_checkpoint_wrapped_module", block)
        inner = getattr(inner, "_orig_mod", inner)
        if hasattr(inner, "moe") and parallel_dims.ep > 1:
            expert_mesh = parallel_dims.expert_fsdp_mesh()
            local_experts = model.args.num_experts // parallel_dims.ep
            placement = _expert_placement(inner.moe.experts, local_experts,
                                          expert_mesh.size(-1))
            experts = fully_shard(inner.moe.experts, mesh=expert_mesh, mp_policy=policy,
                                  shard_placement_fn=placement)
            sharded.append(experts)
        sharded.append(fully_shard(block, mesh=mesh, mp_policy=policy))
    if lm_head_fp32:
        sharded.append(shard_head_fp32(model, mesh))
    # The root keeps embedding, final norm and head; no reshard after forward since backward
    # starts with the head right away.
    sharded.append(fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False))
    for module in sharded:
        _sum_gradients(module)
