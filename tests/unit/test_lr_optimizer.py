import math

import pytest
import torch

from titan_spec.components.lr_scheduler import lr_factor
from titan_spec.components.optimizer import clip_grad_norm_


def test_warmup_then_cosine_to_min():
    values = [lr_factor(s, 4, 14, "cosine", 0.1) for s in range(16)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0)
    assert values[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[14] == pytest.approx(0.1) and values[15] == pytest.approx(0.1)


def test_linear_and_constant():
    assert lr_factor(5, 0, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(7, 2, 10, "constant", 0.0) == 1.0


def test_clip_grad_norm_plain_tensors():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert clip_grad_norm_(params, 1.0) == pytest.approx(5.0)
    total = torch.cat([p.grad for p in params]).norm()
    assert total.item() == pytest.approx(1.0, rel=1e-5)
    assert clip_grad_norm_(params, 0.0) == pytest.approx(1.0, rel=1e-5)  # 0 disables
