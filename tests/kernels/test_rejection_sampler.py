"""Losslessness of rejection_sample's token rule (statistical, 1e5 samples each) and exact
equality of the Triton kernels (interpreter on CPU, random numbers drawn in the kernel) with the
PyTorch reference given the CPU twin's numbers for the same keys; the block rule's own tests are
in test_block_verification.py."""

import os
import subprocess
import sys

import pytest
import torch

from tests.stats import P_VALUE_FLOOR, chi_square_p_value
from titan_spec.kernels.counter_rng import (
    ACCEPT,
    DRAFT,
    RESIDUAL,
    RandomKeys,
    exponentials,
    uniforms,
)
from titan_spec.kernels.rejection_reference import rejection_sample_reference, sample_reference
from titan_spec.kernels.rejection_sampler import rejection_sample
from titan_spec.rollout.sampling import SamplingParams, process_logits

N = 100_000
V, K = 10, 3


def _softmax(scale, seed, shape):
    return torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale,
                         dim=-1)


def _run(target, draft, fixed_draft_ids=None, seed=0):
    """target [k+1, V], draft [k, V] or None -> (out [N, k+1], draft ids [N, k])."""
    gen = torch.Generator().manual_seed(seed)
    k = target.shape[0] - 1
    if draft is not None:
        ids = torch.multinomial(draft.repeat(N, 1), 1, replacement=True, generator=gen).view(N, k)
        draft_probs = draft.expand(N, k, V)
    else:
        ids = fixed_draft_ids.expand(N, k)
        draft_probs = None
    out = rejection_sample(ids, draft_probs, target.expand(N, k + 1, V), generator=gen)
    return out, ids


def _assert_lossless(out, target):
    emitted = (out >= 0).sum(dim=1)
    assert (emitted >= 1).all()
    assert ((out >= 0).int().diff(dim=1) <= 0).all(), "tokens after -1 padding"
    for pos in range(target.shape[0]):
        reached = emitted > pos  # every earlier token accepted: position pos is a fresh step
        if reached.sum() < 500:
            continue
        p_value = chi_square_p_value(out[reached, pos], target[pos])
        assert p_value > P_VALUE_FLOOR, f"position {pos}: p={p_value:.2e}"


def _min_overlap(target_row, draft_row):
    return torch.minimum(target_row, draft_row).sum().item()


def _assert_rate(observed_bool, expected):
    rate = observed_bool.double().mean().item()
    sigma = max((expected * (1 - expected) / N) ** 0.5, 1e-9)
    assert abs(rate - expected) < 5 * sigma + 1e-9, (rate, expected)


SCENARIOS = {
    "random": (_softmax(1.0, 1, (K + 1, V)), _softmax(1.0, 2, (K, V))),
    "peaked_target": (_softmax(5.0, 3, (K + 1, V)), _softmax(0.5, 4, (K, V))),
    "peaked_draft": (_softmax(0.5, 5, (K + 1, V)), _softmax(5.0, 6, (K, V))),
    "equal": (_softmax(1.0, 7, (K + 1, V)), None),
    "disjoint": (torch.cat([_softmax(1.0, 8, (K + 1, 5)), torch.zeros(K + 1, 5)], dim=1),
                 torch.cat([torch.zeros(K, 5), _softmax(1.0, 9, (K, 5))], dim=1)),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_lossless(name):
    target, draft = SCENARIOS[name]
    if draft is None:
        draft = target[:K].clone()
    out, ids = _run(target, draft)
    _assert_lossless(out, target)
    _assert_rate(out[:, 0] == ids[:, 0], _min_overlap(target[0], draft[0]))


@pytest.mark.parametrize("params", [SamplingParams(top_k=3), SamplingParams(top_p=0.7),
                                    SamplingParams(temperature=0.7, top_p=0.9)],
                         ids=["top_k", "top_p", "temp_top_p"])
def test_lossless_truncated_target(params):
    logits = torch.randn(K + 1, V, generator=torch.Generator().manual_seed(11)) * 2
    target = process_logits(logits, params)
    draft = _softmax(1.0, 12, (K, V))  # the draft puts mass where the target has none
    assert (target == 0).any()
    out, ids = _run(target, draft)
    _assert_lossless(out, target)
    _assert_rate(out[:, 0] == ids[:, 0], _min_overlap(target[0], draft[0]))


def test_lossless_deterministic_drafts():
    target = _softmax(1.5, 13, (K + 1, V))
    target[1, 4] = 0.0  # the second drafted token is impossible under the target
    target[1] /= target[1].sum()
    ids = torch.tensor([[2, 4, 7]])
    out, _ = _run(target, None, fixed_draft_ids=ids)
    _assert_lossless(out, target)
    _assert_rate(out[:, 0] == 2, target[0, 2].item())
    assert not (out[:, 1] == 4).any()


def test_greedy_targets_accept_exactly_the_argmax():
    target = torch.zeros(K + 1, V)
    target[torch.arange(K + 1), torch.tensor([3, 1, 4, 1])] = 1.0
    ids = torch.tensor([[3, 1, 5]])  # third draft is wrong
    out = rejection_sample(ids.expand(4, K), None, target.expand(4, K + 1, V))
    assert out.tolist() == [[3, 1, 4, -1]] * 4


def test_zero_residual_falls_back_to_target():
    target = _softmax(1.0, 14, (1, 2, V))
    draft = target[:, :1].clone()  # residual max(0, target - draft) is all zero
    ids = torch.tensor([[0]])
    uniforms = torch.ones(1, 1, dtype=torch.float64)  # force the rejection
    noise = torch.empty(1, V).exponential_(generator=torch.Generator().manual_seed(3))
    out = rejection_sample_reference(ids, draft, target, uniforms, noise)
    assert out[0, 0] == (target[0, 0] / noise[0]).argmax() and out[0, 1] == -1


def test_bad_shapes_are_explained():
    with pytest.raises(ValueError, match=r"target_probs must be \[B, k\+1, V\]"):
        rejection_sample(torch.zeros(2, 3, dtype=torch.long), None, torch.rand(2, 3, 5))


CASES = [(k, has_draft, batch, vocab) for k in (0, 1, 4) for has_draft in (True, False)
         for batch, vocab in ((5, 37),)] + [(2, True, 3, 300)]


@pytest.mark.parametrize("rule", ["token", "block"])
@pytest.mark.parametrize("k, has_draft, batch, vocab", CASES)
def test_triton_equals_reference(k, has_draft, batch, vocab, rule):
    from titan_spec.kernels.rejection_triton import rejection_sample_triton

    gen = torch.Generator().manual_seed(k * 7 + has_draft)
    target = torch.softmax(torch.randn(batch, k + 1, vocab, generator=gen) * 2, dim=-1)
    target[0, :, : vocab // 2] = 0.0  # truncated rows, and identical rows below
    target[0] /= target[0].sum(-1, keepdim=True)
    draft = torch.softmax(torch.randn(batch, k, vocab, generator=gen) * 2, dim=-1)
    if batch > 1 and k:
        draft[1] = target[1, :k]
    if has_draft and k:
        ids = torch.multinomial(draft.reshape(-1, vocab), 1, generator=gen).view(batch, k)
    else:
        ids = torch.randint(0, vocab, (batch, k), generator=gen)
    draft_probs = draft if has_draft else None
    for trial in range(3):
        keys = RandomKeys.of(2**40 + trial, torch.randint(0, 2**31, (batch,), generator=gen),
                             torch.randint(0, 2**20, (batch,), generator=gen))
        expected = rejection_sample_reference(ids, draft_probs, target, uniforms(keys, k, ACCEPT),
                                              exponentials(keys, vocab, RESIDUAL), rule)
        got = rejection_sample_triton(ids, draft_probs, target, keys, rule, block=64)
        assert torch.equal(got, expected), (trial, got, expected)


def test_triton_draft_sampling_equals_reference():
    from titan_spec.kernels.rejection_triton import sample_triton

    probs = torch.softmax(torch.randn(4, 300, generator=torch.Generator().manual_seed(5)), -1)
    probs[0, 100:] = 0.0
    keys = RandomKeys.of(77, [0, 1, 2, 3], [9, 9, 30, 1])
    for step in range(3):
        expected = sample_reference(probs, exponentials(keys, 300, DRAFT + step))
        assert torch.equal(sample_triton(probs, keys, DRAFT + step, block=64), expected)


def test_counter_twin_equals_triton_philox():
    """The CPU twin's words are tl.philox's for the same seed and counters."""
    import numpy as np
    import triton
    import triton.language as tl

    from titan_spec.kernels.counter_rng import philox4x32

    @triton.jit
    def words_kernel(out_ptr, seed, request, position, stream, N: tl.constexpr):
        offsets = tl.arange(0, N)
        zero = offsets * 0
        words = tl.philox(seed, offsets.to(tl.uint32), (zero + request).to(tl.uint32),
                          (zero + position).to(tl.uint32), (zero + stream).to(tl.uint32))
        for lane in tl.static_range(4):
            tl.store(out_ptr + offsets * 4 + lane, words[lane].to(tl.int64))

    seed, request, position, stream = 2**41 + 12345, 7, 1234567, 3
    out = torch.zeros(64 * 4, dtype=torch.int64)
    words_kernel[(1,)](out, seed, request, position, stream, N=64)
    full = lambda value: np.full(64, value, dtype=np.uint64)  # noqa: E731
    twin = philox4x32(seed, np.arange(64, dtype=np.uint64), full(request), full(position),
                      full(stream))
    assert np.array_equal(out.numpy(), np.stack(twin, axis=-1).reshape(-1).astype(np.int64))


def test_kernels_compile_ahead_of_time_for_hopper():
    """Valid compiled Triton for sm_90, not only valid in the interpreter (no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "titan_spec.kernels.aot", "--arch", "90"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 7 and all(": sm_90 cubin" in line for line in lines), proc.stdout
