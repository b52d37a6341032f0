"""Draft length per sequence: the heuristic budget, early stops below a confidence threshold,
zero draft rows that make a shorter draft exact (bit-equal to verifying the shorter draft with
the token rule), and through the engine: greedy identity, exact sequence distributions with
both rules, and draft counts that add up."""

import pytest
import torch

from tests.exact import PROMPTS, exact_sequence_probs, outcome_samples
from tests.stats import P_VALUE_FLOOR, chi_square_p_value
from titan_spec.drafters import build_drafter
from titan_spec.kernels.counter_rng import RandomKeys
from titan_spec.kernels.rejection_sampler import rejection_sample
from titan_spec.models import build_model
from titan_spec.rollout.draft_length import DraftLengths, drafted_lengths
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams

DYNAMIC = DraftLengths("heuristic", confidence=0.5)


@pytest.fixture(scope="module")
def target():
    return build_model("qwen3", "debug", seed=0).eval()


@pytest.fixture(scope="module")
def small():
    return build_model("qwen3", "debug", seed=5, n_layers=1).eval()


def test_heuristic_budget_grows_on_full_acceptance_and_shrinks_on_rejection():
    lengths = DraftLengths("heuristic")
    assert lengths.next_budget(4, drafted=4, accepted=4, ceiling=8) == 6
    assert lengths.next_budget(7, drafted=7, accepted=7, ceiling=8) == 8
    assert lengths.next_budget(4, drafted=4, accepted=2, ceiling=8) == 3
    assert lengths.next_budget(1, drafted=1, accepted=0, ceiling=8) == 1
    assert DraftLengths().next_budget(4, drafted=4, accepted=0, ceiling=8) == 4
    with pytest.raises(ValueError, match="schedule"):
        DraftLengths("fast")
    with pytest.raises(ValueError, match="confidence"):
        DraftLengths(confidence=1.0)


def test_a_shorter_draft_as_zero_rows_is_the_shorter_draft():
    """Token rule: rows whose draft ends at L (zero rows after) emit exactly what verifying
    their first L drafts does, given the same random numbers."""
    generator = torch.Generator().manual_seed(0)
    batch, k, vocab = 64, 4, 12
    target = torch.softmax(torch.randn(batch, k + 1, vocab, generator=generator), -1)
    draft = torch.softmax(torch.randn(batch, k, vocab, generator=generator), -1)
    ids = torch.multinomial(draft.reshape(-1, vocab), 1, generator=generator).view(batch, k)
    keys = RandomKeys.of(99, range(batch), [5] * batch)
    for length in range(k):
        padded = draft.clone()
        padded[:, length:] = 0
        assert drafted_lengths(ids, padded).tolist() == [length] * batch
        full = rejection_sample(ids, padded, target, keys=keys)
        short = rejection_sample(ids[:, :length], draft[:, :length], target[:, :length + 1],
                                 keys=keys)
        assert torch.equal(full[:, :length + 1], short)
        assert (full[:, length + 1:] == -1).all()


@pytest.mark.parametrize("verify", ["token", "block"])
def test_greedy_is_identical_with_per_sequence_lengths(target, small, verify):
    params = SamplingParams(temperature=0, max_new_tokens=24)
    plain = RolloutEngine(target, max_batch_size=2, max_seq_len=64).generate(PROMPTS, params)
    engine = RolloutEngine(target, build_drafter("draft_model", model=small),
                           num_draft_tokens=6, max_batch_size=3, max_seq_len=64, verify=verify,
                           draft_lengths=DYNAMIC)
    assert [c.token_ids for c in engine.generate(PROMPTS, params)] == \
        [c.token_ids for c in plain]


def _run(target, draft, lengths, temperature):
    engine = RolloutEngine(target, build_drafter("draft_model", model=draft),
                           num_draft_tokens=8, max_batch_size=5, max_seq_len=64,
                           draft_lengths=lengths)
    out = engine.generate(PROMPTS, SamplingParams(temperature=temperature, max_new_tokens=30,
                                                  seed=1))
    return out, engine.last_stats


def test_confident_drafts_run_longer_and_the_counts_add_up(target):
    """Self-drafting at T = 0.2: every draft is accepted and stops where the draft's own
    probability falls below 0.5, so lengths vary between 1 and the ceiling."""
    out, stats = _run(target, target, DYNAMIC, 0.2)
    drafted = sum(c.stats["drafted"] for c in out)
    assert drafted == stats["drafted"] == sum(stats["drafted_per_position"]) \
        == sum(stats["drafted_per_context"])
    assert sum(c.stats["accepted"] for c in out) == stats["accepted"] == drafted
    per_position = stats["drafted_per_position"]
    assert per_position[0] == stats["sequence_steps"] > per_position[-1] > 0


def test_budgets_shrink_where_drafts_are_rejected(target, small):
    constant = _run(target, small, DraftLengths(), 1.0)[1]
    heuristic = _run(target, small, DraftLengths("heuristic"), 1.0)[1]
    assert constant["drafted"] == 8 * constant["sequence_steps"]
    assert heuristic["drafted"] < 5 * heuristic["sequence_steps"]  # budgets well under 8


@pytest.mark.slow
@pytest.mark.parametrize("verify", ["token", "block"])
def test_sequence_distribution_is_exact_with_per_sequence_lengths(target, small, verify):
    """20k three-token continuations (216 outcomes): early stops and budgets keep the target's
    exact sequence distribution."""
    params, vocab, n = SamplingParams(temperature=1.0, max_new_tokens=3, seed=31), 6, 20_000
    prompt = [1, 2, 3, 4]
    exact, outcomes = exact_sequence_probs(target, prompt, 3, params, vocab)
    engine = RolloutEngine(target, build_drafter("draft_model", model=small),
                           num_draft_tokens=3, max_batch_size=2000, max_seq_len=16,
                           vocab_size=vocab, verify=verify,
                           draft_lengths=DraftLengths("heuristic", confidence=0.3))
    completions = engine.generate([prompt] * n, params)
    assert engine.last_stats["drafted"] < 3 * engine.last_stats["sequence_steps"]
    assert chi_square_p_value(outcome_samples(completions, outcomes), exact) > P_VALUE_FLOOR
