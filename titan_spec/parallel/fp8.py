"""FP8 GEMMs for the learner, the verifier and the rollout model ([quantize], backend emulated).

A converted linear layer quantizes its input and its weight to float8 e4m3 with float32
scales and multiplies the dequantized operands in float32: exactly the product
torch._scaled_mm computes from the same float8 operands and scales (to fp32 summation order;
a test checks it on CPU). Recipes:

- rowwise: one scale per input row (token) and one per weight output channel. Row-local: a
  row's output depends on that row alone, so the verifier's probabilities for one draft do not
  move with the other rows of the batch or the other drafts: speculation stays exact.
- tensorwise: one scale per tensor (dynamic, from the current amax). A row's output then
  depends on every row's magnitude: allowed for the learner, refused for the verifier.

Training goes straight through the quantization (the backward GEMMs in the input's dtype, as
fake-quantization training does). Layers named in quantize.keep_high_precision (embedding, LM
head, MoE router by default) and the grouped MoE experts stay in high precision. Transformer
Engine and torchao backends are not built yet (README: not done)."""

from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
RECIPES = ("rowwise", "tensorwise")
ROW_LOCAL = ("rowwise",)


def quantize(values: torch.Tensor, recipe: str) -> tuple[torch.Tensor, torch.Tensor]:
    """values [..., K] -> (float8 values, float32 scales [..., 1] for rowwise, [] for
    tensorwise) with values ~= float8 * scale and |float8| <= FP8_MAX."""
    values = values.float()
    if recipe == "rowwise":
        amax = values.abs().amax(dim=-1, keepdim=True)
    elif recipe == "tensorwise":
        amax = values.abs().amax()
    else:
        raise ValueError(f"unknown FP8 recipe {recipe!r}; choose one of {RECIPES}.")
    scale = amax.clamp(min=1e-12) / FP8_MAX
    return (values / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def fp8_matmul(inputs: torch.Tensor, weight: torch.Tensor, recipe: str) -> torch.Tensor:
    """inputs [..., K] @ weight[N, K].T through float8 operands, in float32."""
    flat = inputs.reshape(-1, inputs.shape[-1])
    input_fp8, input_scale = quantize(flat, recipe)
    weight_fp8, weight_scale = quantize(weight, recipe)
    out = (input_fp8.float() * input_scale) @ (weight_fp8.float() * weight_scale).T
    return out.view(*inputs.shape[:-1], weight.shape[0])


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weight, recipe):
        ctx.save_for_backward(inputs, weight)
        return fp8_matmul(inputs, weight, recipe).to(inputs.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        inputs, weight = ctx.saved_tensors
        grad_in = grad_out @ weight.to(grad_out.dtype)
        grad_weight = grad_out.reshape(-1, grad_out.shape[-1]).T @ inputs.reshape(
            -1, inputs.shape[-1]).to(grad_out.dtype)
        return grad_in, grad_weight.to(weight.dtype), None


class Fp8Linear(nn.Linear):
    """An nn.Linear (same parameters, same state-dict names) whose GEMM goes through FP8."""

    fp8_recipe = "rowwise"

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = _Fp8Linear.apply(inputs, self.weight, self.fp8_recipe)
        return out if self.bias is None else out + self.bias


def convert_to_fp8(model: nn.Module, recipe: str, keep: tuple[str, ...]) -> list[str]:
    """Turn every nn.Linear inside model.layers whose path names none of `keep` into an
    Fp8Linear with `recipe`, in place (parameters untouched). -> the converted paths."""
    converted = []
    for name, module in model.named_modules():
        inside = name.startswith("layers.") or ".layers." in name
        if not inside or type(module) is not nn.Linear or set(name.split(".")) & set(keep):
            continue
        module.__class__ = Fp8Linear
        module.fp8_recipe = recipe
        converted.append(name)
    return converted


class Fp8Plan:
    """The job's [quantize] table applied: which recipe each role's modules get."""

    def __init__(self, quantize_cfg=None):
        self.cfg = quantize_cfg
        self.enabled = quantize_cfg is not None and quantize_cfg.backend == "emulated"

    def learner(self, model: nn.Module) -> nn.Module:
        if self.enabled:
            convert_to_fp8(model, self.cfg.learner_recipe, tuple(self.cfg.keep_high_precision))
        return model

    def verifier(self, model: nn.Module) -> nn.Module:
        """The verifier view, the rollout model and the scorer: a row-local recipe."""
        if self.enabled:
            convert_to_fp8(model, self.cfg.verifier_recipe, tuple(self.cfg.keep_high_precision))
        return model

