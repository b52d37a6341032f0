"""Expert parallelism: experts sharded over the `ep` mesh axis, tokens moved with all-to-all.

Applied from the outside to a plain `GroupedExperts` module (model code stays parallel-free):
its weights become DTensors Shard(0) on the ep mesh, and forward hooks wrap its call
`experts(routed_input, tokens_per_expert)` with a dispatch all-to-all before and a combine
all-to-all after. Gradients flow back through both all-to-alls, so every expert weight receives
the gradient of every token routed to it from any rank."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

from titan_spec import comm


class _AllToAll(torch.autograd.Function):
    """Differentiable all_to_all_single with explicit split sizes."""

    @staticmethod
    def forward(ctx, tokens, output_splits, input_splits, group):
        ctx.group, ctx.output_splits, ctx.input_splits = group, output_splits, input_splits
        out = tokens.new_empty((sum(output_splits), *tokens.shape[1:]))
        comm.all_to_all_single(out, tokens.contiguous(), output_splits, input_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad_in = grad_out.new_empty((sum(ctx.input_splits), *grad_out.shape[1:]))
        comm.all_to_all_single(grad_in, grad_out.contiguous(), ctx.input_splits,
                               ctx.output_splits, group=ctx.group)
        return grad_in, None, None, None


def all_to_all(tokens, output_splits: list[int], input_splits: list[int], group):
    return _AllToAll.apply(tokens, output_splits, input_splits, group)


class ExpertParallel(ParallelStyle):
    """ParallelStyle for GroupedExperts(routed_input [M, D] sorted by global expert id,
    tokens_per_expert [E])."""

    def __init__(self):
        super().__init__()
        self._pending: list[tuple] = []

    @staticmethod
    def _partition(name, module, mesh):
        for param_name, param in list(module.named_parameters(recurse=False)):
            sharded = nn.Parameter(distribute_tensor(param, mesh, [Shard(0)], src_data_rank=None))
            module.register_parameter(param_name, sharded)

    def _dispatch(self, module, inputs, mesh):
        routed_input, tokens_per_expert = inputs
        group, ep = mesh.get_group(), mesh.size()
        num_local = tokens_per_expert.numel() // ep
        send_counts = tokens_per_expert.view(ep, num_local)
        recv_counts = torch.empty_like(send_counts)
        comm.all_to_all_single(recv_counts, send_counts, group=group)  # [src rank, local expert]
        input_splits = send_counts.sum(1).tolist()
        output_splits = recv_counts.sum(1).tolist()
        received = all_to_all(routed_input, output_splits, input_splits, group)
        # Received tokens are grouped (source rank, local expert); experts want them grouped
        # (local expert, source rank).
        flat_counts = recv_counts.flatten().tolist()
        chunks = torch.arange(received.shape[0], device=received.device).split(flat_counts)
        order = [chunks[src * num_local + e] for e in range(num_local) for src in range(ep)]
        permutation = torch.cat(order) if order else received.new_zeros(0, dtype=torch.long)
        self._pending.append((permutation, input_splits, output_splits, group))
        return received[permutation], recv_counts.sum(0)

    def _combine(self, module, outputs, mesh):
        permutation, input_splits, output_splits, group = self._pending.pop()
        unpermuted = torch.empty_like(outputs).index_copy_(0, permutation, outputs)
        return all_to_all(unpermuted, input_splits, output_splits, group)

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        return distribute_module(module, device_mesh, partition_fn=self._partition,
                                 input_fn=self._dispatch, output_fn=self._combine)


def apply_expert_parallel(model: nn.Module, ep_mesh) -> None:
    from torch.distributed.tensor.parallel import parallelize_module

    for block in model.layers.values():
        if hasattr(block, "moe"):
            parallelize_module(block.moe.experts, ep_mesh, ExpertParallel())
