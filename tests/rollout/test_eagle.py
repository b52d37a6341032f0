"""EAGLE drafter: its cached, catch-up-based first draft equals a teacher-forced full forward
of the head over the committed sequence; greedy identity; exact sequence distribution."""

import pytest
import torch

from tests.kernels.stats import P_VALUE_FLOOR, chi_square_p_value
from tests.rollout.test_engine import PROMPTS, _exact_sequence_probs
from titan_spec.drafters import build_drafter
from titan_spec.models import build_model
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams, process_logits


@pytest.fixture(scope="module")
def target():
    return build_model("qwen3", "debug", seed=0).eval()


def _teacher_forced_first_draft(target, head, sequence, params, vocab):
    tokens = torch.tensor([sequence])
    with torch.no_grad():
        _, hidden = target(tokens, return_hidden=True)
        previous = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)
        positions = torch.arange(len(sequence)).unsqueeze(0)
        predicted = head(previous, target.tok_embeddings(tokens), positions)
        return process_logits(target.output(predicted[:, -1]), params, vocab)[0]


def test_cached_drafting_matches_teacher_forcing(target):
    drafter = build_drafter("eagle", target=target, seed=3)
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=5)
    checked = []
    original = drafter.propose

    def checking_propose(request):
        ids, probs = original(request)
        for row, sequence in enumerate(request.sequences):
            expected = _teacher_forced_first_draft(target, drafter.head, sequence, params,
                                                   request.vocab_size)
            torch.testing.assert_close(probs[row, 0], expected, atol=2e-5, rtol=1e-4)
            checked.append(len(sequence))
        return ids, probs

    drafter.propose = checking_propose
    RolloutEngine(target, drafter, num_draft_tokens=3, max_batch_size=3,
                  max_seq_len=64).generate(PROMPTS, params)
    assert len(checked) > 20 and len(set(checked)) > 10


def test_greedy_identity(target):
    params = SamplingParams(temperature=0, max_new_tokens=24)
    plain = RolloutEngine(target, max_batch_size=2, max_seq_len=64).generate(PROMPTS, params)
    for k in (1, 4):
        engine = RolloutEngine(target, build_drafter("eagle", target=target), num_draft_tokens=k,
                               max_batch_size=3, max_seq_len=64, adaptive=k == 4)
        assert [c.token_ids for c in engine.generate(PROMPTS, params)] == \
            [c.token_ids for c in plain]


@pytest.mark.slow
def test_sequence_distribution_is_exact(target):
    params, vocab, n = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=3, seed=21), \
        6, 20_000
    prompt = [1, 2, 3, 4]
    exact, outcomes = _exact_sequence_probs(target, prompt, 3, params, vocab)
    engine = RolloutEngine(target, build_drafter("eagle", target=target), num_draft_tokens=2,
                           max_batch_size=2000, max_seq_len=16, vocab_size=vocab)
    completions = engine.generate([prompt] * n, params)
    index = {o: i for i, o in enumerate(outcomes)}
    samples = torch.tensor([index[tuple(c.token_ids)] for c in completions])
    assert chi_square_p_value(samples, exact) > P_VALUE_FLOOR


def test_eagle_needs_the_target():
    with pytest.raises(ValueError, match="target="):
        build_drafter("eagle")
