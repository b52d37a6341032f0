"""Online drafter adaptation: no gradient reaches the policy, the drafter does learn, and a
collapsed acceptance rate is reported loudly."""

import logging

import pytest
import torch

from titan_spec.config.schema import Drafter as DrafterConfig
from titan_spec.drafters.online import OnlineDrafter, check_acceptance
from titan_spec.drafters.trainable import build_trainable_drafter
from titan_spec.models import build_model
from titan_spec.rl.rollout_batch import RolloutBatch, chunks

VOCAB = 54


def _batch(seed=0, rows=4, width=10):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randint(3, VOCAB, (rows, width), generator=gen)
    mask = torch.zeros(rows, width)
    mask[:, 4:] = 1.0
    zeros = torch.zeros(rows)
    return RolloutBatch(inputs, inputs.roll(-1, 1), mask, torch.zeros(rows, width), zeros, zeros,
                        zeros.long(), zeros.long())


@pytest.mark.parametrize("kind", ["eagle", "mtp", "draft_model"])
def test_drafter_loss_reaches_only_the_drafter(kind):
    policy = build_model("qwen3", "debug", seed=0)  # parameters require grad
    trainable = build_trainable_drafter(kind, policy, seed=1, draft_layers=1)
    online = OnlineDrafter(trainable, DrafterConfig(lr=1e-2))
    batch = _batch()
    online.begin()
    # A forward WITH autograd history: the drafter side must detach it itself.
    logits, hidden = policy(batch.inputs, return_hidden=True)
    online.accumulate(batch, 0, 4, logits, hidden, policy, VOCAB, float(batch.mask.sum()))
    assert all(p.grad is None for p in policy.parameters())
    grads = [p.grad for p in trainable.module.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    before = [p.detach().clone() for p in trainable.module.parameters()]
    metrics = online.step()
    assert metrics["drafter_loss"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable.module.parameters(),
                                                   strict=True))


def test_online_updates_lower_the_drafter_loss():
    policy = build_model("qwen3", "debug", seed=0).eval()
    trainable = build_trainable_drafter("eagle", policy, seed=1)
    online = OnlineDrafter(trainable, DrafterConfig(lr=3e-3))
    batch = _batch(seed=5)
    losses = []
    for _ in range(15):
        online.begin()
        for start, stop in chunks(batch.inputs.shape[0], 2):
            with torch.no_grad():
                logits, hidden = policy(batch.inputs[start:stop], return_hidden=True)
            online.accumulate(batch, start, stop, logits, hidden, policy, VOCAB,
                              float(batch.mask.sum()))
        losses.append(online.step()["drafter_loss"])
    assert losses[-1] < 0.8 * losses[0]


def test_collapse_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="titan_spec"):
        assert check_acceptance([0.01, 0.0], 0.05, "eagle")
    assert "DRAFTER ACCEPTANCE COLLAPSED" in caplog.text and "0.010" in caplog.text
    caplog.clear()
    assert not check_acceptance([0.6, 0.3], 0.05, "eagle")
    assert not check_acceptance([], 0.05, "eagle")
    assert caplog.text == ""
