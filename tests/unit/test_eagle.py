"""Drafters with their own KV cache (EAGLE head, draft model): the cached, catch-up-based first
draft equals a teacher-forced full forward over the committed sequence, also when some
iterations draft nothing (k = 0); EAGLE greedy identity and exact sequence distribution."""

import itertools

import pytest
import torch

from tests.exact import PROMPTS, exact_sequence_probs, outcome_samples
from tests.stats import P_VALUE_FLOOR, chi_square_p_value
from titan_spec.drafters import build_drafter
from titan_spec.models import build_model
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams, process_logits


@pytest.fixture(scope="module")
def target():
    return build_model("qwen3", "debug", seed=0).eval()


def _teacher_forced_chain(target, heads, sequence, params, vocab):
    """Draft distributions after `sequence` from each head of the chain, teacher forced:
    head m at p reads (o^{m-1}_{p-1}, x_p) with o^0 the target's hidden states."""
    tokens = torch.tensor([sequence])
    positions = torch.arange(len(sequence)).unsqueeze(0)
    out = []
    with torch.no_grad():
        _, source = target(tokens, return_hidden=True)
        for head in heads:
            previous = torch.cat([torch.zeros_like(source[:, :1]), source[:, :-1]], dim=1)
            source = head(previous, target.tok_embeddings(tokens), positions)
            out.append(process_logits(target.output(source[:, -1]), params, vocab)[0])
    return out


def _teacher_forced_first_draft(target, head, sequence, params, vocab):
    return _teacher_forced_chain(target, [head], sequence, params, vocab)[0]


def _draft_model_first_draft(draft_model, sequence, params, vocab):
    with torch.no_grad():
        return process_logits(draft_model(torch.tensor([sequence]))[0, -1], params, vocab)


class Schedule:
    """A k policy that cycles through a fixed list (0 = no drafting that iteration)."""

    def __init__(self, ks):
        self.ks, self.chosen = itertools.cycle(ks), []

    def choose(self, batch_size):
        self.chosen.append(next(self.ks))
        return self.chosen[-1]

    def observe(self, *args):
        pass

    def plain_time(self, batch_size):
        return None  # nothing measured: no speed-up accounting


def _check_drafts(drafter, depth: int, reference) -> list:
    """Wrap drafter.propose: draft distribution `depth` of every row must equal
    reference(sequence, drafted ids of the row, vocab). Returns the checked sequence lengths."""
    checked, original = [], drafter.propose

    def checking_propose(request):
        ids, probs = original(request)
        for row, sequence in enumerate(request.sequences):
            expected = reference(sequence, ids[row].tolist(), request.vocab_size)
            torch.testing.assert_close(probs[row, depth], expected, atol=2e-5, rtol=1e-4)
            checked.append(len(sequence))
        return ids, probs

    drafter.propose = checking_propose
    return checked


@pytest.mark.parametrize("kind", ["eagle", "mtp", "draft_model"])
@pytest.mark.parametrize("schedule", [[3], [0, 0, 3, 2, 0, 1]], ids=["k3", "with_k0"])
def test_cached_drafting_matches_teacher_forcing(target, kind, schedule):
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=5)
    small = build_model("qwen3", "debug", seed=9, n_layers=2).eval()
    if kind in ("eagle", "mtp"):
        drafter = build_drafter(kind, target=target, seed=3)
        checked = _check_drafts(drafter, 0, lambda seq, ids, vocab: _teacher_forced_first_draft(
            target, drafter.heads[0], seq, params, vocab))
    else:
        drafter = build_drafter("draft_model", model=small)
        checked = _check_drafts(drafter, 0, lambda seq, ids, vocab: _draft_model_first_draft(
            small, seq, params, vocab))
    engine = RolloutEngine(target, drafter, num_draft_tokens=3, max_batch_size=3,
                           max_seq_len=64)
    engine.adaptive_k = Schedule(schedule)
    engine.generate(PROMPTS, params)
    assert len(checked) > 10 and len(set(checked)) > 5


def test_mtp_second_draft_comes_from_the_second_head(target):
    drafter = build_drafter("mtp", target=target, seed=4, num_heads=2)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=6)
    checked = _check_drafts(drafter, 1, lambda seq, ids, vocab: _teacher_forced_chain(
        target, drafter.heads, seq + ids[:1], params, vocab)[1])
    RolloutEngine(target, drafter, num_draft_tokens=3, max_batch_size=3,
                  max_seq_len=64).generate(PROMPTS, params)
    assert len(checked) > 10


@pytest.mark.parametrize("kind", ["eagle", "mtp"])
def test_greedy_identity(target, kind):
    params = SamplingParams(temperature=0, max_new_tokens=24)
    plain = RolloutEngine(target, max_batch_size=2, max_seq_len=64).generate(PROMPTS, params)
    for k in (1, 4):
        engine = RolloutEngine(target, build_drafter(kind, target=target), num_draft_tokens=k,
                               max_batch_size=3, max_seq_len=64, adaptive=k == 4)
        assert [c.token_ids for c in engine.generate(PROMPTS, params)] == \
            [c.token_ids for c in plain]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eagle", "mtp"])
def test_sequence_distribution_is_exact(target, kind):
    params, vocab, n = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=3, seed=21), \
        6, 20_000
    prompt = [1, 2, 3, 4]
    exact, outcomes = exact_sequence_probs(target, prompt, 3, params, vocab)
    engine = RolloutEngine(target, build_drafter(kind, target=target), num_draft_tokens=2,
                           max_batch_size=2000, max_seq_len=16, vocab_size=vocab)
    completions = engine.generate([prompt] * n, params)
    assert chi_square_p_value(outcome_samples(completions, outcomes), exact) > P_VALUE_FLOOR


def test_head_drafters_need_the_target():
    for kind in ("eagle", "mtp"):
        with pytest.raises(ValueError, match="target="):
            build_drafter(kind)
