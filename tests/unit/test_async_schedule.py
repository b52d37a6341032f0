"""The async schedule and the importance weights (lag 0 is exactly the synchronous loss)."""

import torch

from titan_spec.rl.async_rl import syncs_sent, weights_needed
from titan_spec.rl.losses import grpo_loss
from titan_spec.rl.rollout_is import is_weights


def test_schedule():
    assert [weights_needed(s, 1) for s in range(1, 6)] == [0, 0, 1, 2, 3]
    assert [weights_needed(s, 0) for s in range(1, 4)] == [0, 1, 2]
    # the first sync, then one after each step whose version a later batch uses
    assert syncs_sent(5, 1, "wait") == 4 and syncs_sent(5, 0, "wait") == 5
    assert syncs_sent(5, 3, "drop") == 5 and syncs_sent(1, 0, "drop") == 1


def test_is_weights_lag_zero_is_the_synchronous_loss():
    torch.manual_seed(0)
    logprobs = torch.randn(3, 4, requires_grad=True)
    old = logprobs.detach() + 0.01 * torch.randn(3, 4)
    behaviour = old + 0.05 * torch.randn(3, 4)
    mask = torch.ones(3, 4)
    adv = torch.tensor([1.0, -0.5, 0.2])
    weights, _ = is_weights(old, behaviour, mask, torch.zeros(3, dtype=torch.long), "none", 2.0,
                            0.5, 2.0)
    assert torch.equal(weights, mask)
    synchronous, _ = grpo_loss(logprobs, old, adv, mask, torch.tensor(12.0), 0.2, 0.28)
    corrected, _ = grpo_loss(logprobs, old, adv, mask, torch.tensor(12.0), 0.2, 0.28,
                             is_weights=weights)
    assert torch.equal(synchronous, corrected)
    lagged, cut = is_weights(old, behaviour, mask, torch.tensor([0, 1, 2]), "none", 2.0, 0.5,
                             1.02)
    assert torch.equal(lagged[0], mask[0])
    assert torch.allclose(lagged[1:], (old - behaviour).exp()[1:].clamp(max=1.02))
    assert torch.equal(cut[1:], (old - behaviour).exp()[1:] > 1.02) and not cut[0].any()
