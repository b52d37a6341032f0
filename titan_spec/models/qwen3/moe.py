"""Qwen3-MoE feed-forward: top-k softmax router over grouped SwiGLU experts, with the Switch-style
load-balancing auxiliary loss. Token dispatch is a local sort; expert parallelism (an all-to-all
around `GroupedExperts`) is attached from the outside by parallel/expert_parallel.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _local(weight: torch.Tensor) -> torch.Tensor:
    # Under expert parallelism the weights are DTensors sharded on the expert dim; the
    # dispatch hook has already routed only local experts' tokens here.
    return weight.to_local() if hasattr(weight, "to_local") else weight


class GroupedExperts(nn.Module):
    def __init__(self, num_experts: int, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))  # gate
        self.w3 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))  # up
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))  # down

    def forward(self, routed_input: torch.Tensor, tokens_per_expert: torch.Tensor):
        """routed_input [M, dim] grouped by expert; tokens_per_expert [E_local]."""
        w1, w2, w3 = _local(self.w1), _local(self.w2), _local(self.w3)
        counts = tokens_per_expert.tolist()
        outputs = []
        for expert, chunk in enumerate(torch.split(routed_input, counts)):
            hidden = F.silu(chunk @ w1[expert]) * (chunk @ w3[expert])
            outputs.append(hidden @ w2[expert])
        return torch.cat(outputs) if outputs else routed_input.new_zeros(0, w2.shape[-1])


class MoE(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, num_experts: int, top_k: int, norm_topk: bool):
        super().__init__()
        self.num_experts, self.top_k, self.norm_topk = num_experts, top_k, norm_topk
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = GroupedExperts(num_experts, dim, hidden_dim)
        self.aux_loss: torch.Tensor | None = None

    def route(self, x_flat: torch.Tensor):
        """x_flat [N, dim] -> (weights [N, k], expert ids [N, k], router probs [N, E])."""
        router_probs = F.softmax(self.router(x_flat).float(), dim=-1)
        weights, expert_ids = router_probs.topk(self.top_k, dim=-1)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, expert_ids, router_probs

    def load_balance_loss(self, expert_ids, router_probs) -> torch.Tensor:
        # Switch-Transformer form: E * sum_e (fraction of routed slots to e) * (mean prob of e).
        counts = torch.bincount(expert_ids.flatten(), minlength=self.num_experts)
        fraction = counts.float() / expert_ids.numel()
        return self.num_experts * (fraction * router_probs.mean(dim=0)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x_flat = x.reshape(-1, shape[-1])
        weights, expert_ids, router_probs = self.route(x_flat)
        self.aux_loss = self.load_balance_loss(expert_ids, router_probs) if self.training else None
        flat_ids = expert_ids.flatten()  # [N * k]
        order = torch.argsort(flat_ids, stable=True)
        token_index = order // self.top_k
        tokens_per_expert = torch.bincount(flat_ids, minlength=self.num_experts)
        routed_out = self.experts(x_flat[token_index], tokens_per_expert)
        routed_weights = weights.flatten()[order].unsqueeze(-1).to(routed_out.dtype)
        out = torch.zeros_like(x_flat).index_add_(0, token_index, routed_out * routed_weights)
        return out.view(shape)
