"""FP8 emulated GEMMs (parallel/fp8.py): equal to torch._scaled_mm on the same float8 operands;
rowwise scaling is row-local (a row's output does not move with the other rows), tensorwise is
not; the conversion leaves embedding, head and router in high precision; training goes straight
through; speculative sampling with an FP8 verifier keeps the FP8 target's exact distribution."""

import copy

import pytest
import torch
from torch import nn

from tests.exact import exact_sequence_probs, outcome_samples
from tests.stats import P_VALUE_FLOOR, chi_square_p_value
from titan_spec.drafters import build_drafter
from titan_spec.models import build_model
from titan_spec.parallel.fp8 import ROW_LOCAL, Fp8Linear, convert_to_fp8, fp8_matmul, quantize
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams


def _operands(seed=0, rows=6, inner=64, outer=48):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(rows, inner, generator=generator)
    inputs[2] *= 30  # rows of very different magnitude
    return inputs, torch.randn(outer, inner, generator=generator) * 0.1


@pytest.mark.parametrize("recipe", ["rowwise", "tensorwise"])
def test_emulated_gemm_equals_scaled_mm(recipe):
    inputs, weight = _operands()
    input_fp8, input_scale = quantize(inputs, recipe)
    weight_fp8, weight_scale = quantize(weight, recipe)
    if recipe == "rowwise":
        scale_a, scale_b = input_scale, weight_scale.T.contiguous()
    else:
        scale_a, scale_b = input_scale.reshape(()), weight_scale.reshape(())
    reference = torch._scaled_mm(input_fp8, weight_fp8.T, scale_a=scale_a, scale_b=scale_b,
                                 out_dtype=torch.float32)
    emulated = fp8_matmul(inputs, weight, recipe)
    assert torch.allclose(emulated, reference, rtol=1e-5, atol=1e-5 * reference.abs().max())
    # and FP8 is really lossy: the product moves away from the high-precision one
    assert not torch.allclose(emulated, inputs @ weight.T, rtol=1e-3)


def _row_locality_gap(recipe: str) -> float:
    """Largest change of row 0's output when the other rows of its batch change."""
    inputs, weight = _operands()
    alone = fp8_matmul(inputs[:1], weight, recipe)
    others = inputs.clone()
    others[1:] *= 50  # an outlier elsewhere in the batch
    in_batch = fp8_matmul(others, weight, recipe)[:1]
    return float((alone - in_batch).abs().max())


def test_verifier_recipes_are_row_local_and_tensorwise_is_not():
    for recipe in ROW_LOCAL:
        assert _row_locality_gap(recipe) < 1e-5, recipe
    assert _row_locality_gap("tensorwise") > 1e-2


def test_conversion_keeps_embedding_head_and_router_in_high_precision():
    model = build_model("qwen3", "debug_moe", seed=0)
    names = set(model.state_dict())
    converted = convert_to_fp8(model, "rowwise", ("tok_embeddings", "output", "router"))
    assert set(model.state_dict()) == names  # same parameters, same names
    assert converted and all(".attention." in n or ".feed_forward." in n for n in converted)
    assert type(model.output) is nn.Linear
    assert not [n for n, m in model.named_modules() if "router" in n and isinstance(m, Fp8Linear)]


def test_training_goes_straight_through():
    inputs, weight = _operands()
    layer = nn.Linear(64, 48, bias=False)
    layer.weight.data.copy_(weight)
    plain = copy.deepcopy(layer)
    convert_to_fp8(nn.ModuleDict({"layers": nn.ModuleDict({"0": layer})}), "rowwise", ())
    assert isinstance(layer, Fp8Linear)
    x = inputs.clone().requires_grad_()
    x_plain = inputs.clone().requires_grad_()
    grad = torch.randn(6, 48, generator=torch.Generator().manual_seed(1))
    layer(x).backward(grad)
    plain(x_plain).backward(grad)
    assert torch.allclose(x.grad, x_plain.grad) and torch.allclose(layer.weight.grad,
                                                                   plain.weight.grad)


@pytest.mark.slow
def test_speculation_is_exact_with_an_fp8_verifier(verify="token"):
    """The FP8 (rowwise) target's own sequence distribution, enumerated with full forwards, is
    what the speculative engine samples with that target verifying a draft model's tokens."""
    target = build_model("qwen3", "debug", seed=0).eval()
    convert_to_fp8(target, "rowwise", ("tok_embeddings", "output", "router"))
    drafter = build_drafter("draft_model", model=build_model("qwen3", "debug", seed=5,
                                                             n_layers=1).eval())
    params, vocab, prompt = SamplingParams(temperature=1.0, max_new_tokens=3, seed=21), 6, [1, 2]
    exact, outcomes = exact_sequence_probs(target, prompt, 3, params, vocab)
    engine = RolloutEngine(target, drafter, num_draft_tokens=2, max_batch_size=2000,
                           max_seq_len=16, vocab_size=vocab, verify=verify)
    completions = engine.generate([prompt] * 20_000, params)
    assert chi_square_p_value(outcome_samples(completions, outcomes), exact) > P_VALUE_FLOOR
