"""GRPO advantages and the clipped-surrogate loss against hand-computed values."""

import math

import pytest
import torch

from titan_spec.rl.advantages import group_advantages, informative_groups
from titan_spec.rl.losses import build_loss, grpo_loss, k3_kl


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of [1, 0, 0, 1]
    expected = [0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)
    assert group_advantages(rewards, 4, normalize_std=False).tolist() == pytest.approx(
        [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_informative_groups_and_shape_errors():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    assert informative_groups(rewards, 2).tolist() == [True, True, False, False, False, False]
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.ones(5), 2)


def _loss(ratio, advantage, clip_low=0.2, clip_high=0.28, mask=1.0, tokens=1.0):
    old = torch.zeros(1, 1)
    logprobs = torch.full((1, 1), math.log(ratio), requires_grad=True)
    loss, metrics = grpo_loss(logprobs, old, torch.tensor([advantage]),
                              torch.tensor([[mask]]), torch.tensor(tokens), clip_low, clip_high)
    loss.backward()
    return loss.item(), logprobs.grad.item(), metrics


@pytest.mark.parametrize("ratio, advantage, loss, grad, clipped", [
    (1.0, 2.0, -2.0, -2.0, 0.0),  # on-policy: -A, gradient -A * ratio
    (1.5, 2.0, -1.28 * 2.0, 0.0, 1.0),  # A > 0 above 1 + clip_high: clipped, no gradient
    (1.2, 2.0, -1.2 * 2.0, -1.2 * 2.0, 0.0),  # inside the clip-higher range (1.28)
    (0.5, -1.0, 0.8, 0.0, 1.0),  # A < 0 below 1 - clip_low: clipped, no gradient
    (1.5, -1.0, 1.5, 1.5, 0.0),  # A < 0 above the range: pessimistic, unclipped
])
def test_clipping_edges(ratio, advantage, loss, grad, clipped):
    value, gradient, metrics = _loss(ratio, advantage)
    assert value == pytest.approx(loss, rel=1e-5)
    assert gradient == pytest.approx(grad, rel=1e-5, abs=1e-7)
    assert metrics["clip_fraction"].item() == clipped


def test_masked_tokens_do_not_count_and_global_normaliser():
    logprobs = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, _ = grpo_loss(logprobs, torch.zeros(2, 3), torch.tensor([1.0, -2.0]), mask,
                        torch.tensor(10.0), 0.2, 0.28)
    loss.backward()
    assert loss.item() == pytest.approx((-1 - 1 + 2) / 10)
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.1, -0.1, 0.0], [0.2, 0.0, 0.0]]))


def test_split_batches_with_global_normaliser_sum_to_full_batch():
    """Two ranks (or micro-batches) each dividing by the GLOBAL token count: summed gradients
    equal the full batch's token mean, whatever the split."""
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    old = torch.randn(4, 5) * 0.1
    adv = torch.randn(4)
    mask = (torch.rand(4, 5) > 0.3).float()
    total = mask.sum()
    full, _ = grpo_loss(logits, old, adv, mask, total, 0.2, 0.28)
    (full_grad,) = torch.autograd.grad(full, logits)
    parts = [grpo_loss(logits[a:b], old[a:b], adv[a:b], mask[a:b], total, 0.2, 0.28)[0]
             for a, b in ((0, 1), (1, 4))]
    (split_grad,) = torch.autograd.grad(sum(parts), logits)
    torch.testing.assert_close(split_grad, full_grad)


def test_kl_term():
    logprobs = torch.log(torch.tensor([[0.5, 0.2]]))
    assert k3_kl(logprobs, logprobs).abs().max().item() == 0
    ref = torch.log(torch.tensor([[0.25, 0.4]]))
    kl = k3_kl(logprobs, ref)
    ratio = torch.exp(ref - logprobs)
    torch.testing.assert_close(kl, ratio - torch.log(ratio) - 1)
    assert (kl > 0).all()
    loss, metrics = grpo_loss(logprobs, logprobs, torch.zeros(1), torch.ones(1, 2),
                              torch.tensor(2.0), 0.2, 0.28, ref_logprobs=ref, kl_coef=0.5)
    assert loss.item() == pytest.approx(0.5 * kl.sum().item() / 2)
    assert metrics["kl"].item() == pytest.approx(kl.sum().item() / 2)


def test_loss_registry():
    assert build_loss("grpo") is grpo_loss
    with pytest.raises(ValueError, match="unknown rl.loss"):
        build_loss("ppo2")
