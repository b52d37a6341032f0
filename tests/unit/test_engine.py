"""RolloutEngine: greedy identity with every drafter, exact sequence distribution with every
drafter (chi-square against probabilities enumerated from the model), stops, lengths,
continuous batching, seeded determinism and behaviour logprobs."""


import pytest
import torch

from tests.exact import PROMPTS, exact_sequence_probs, outcome_samples
from tests.stats import P_VALUE_FLOOR, chi_square_p_value
from titan_spec.drafters import build_drafter
from titan_spec.drafters.base import Drafter
from titan_spec.models import build_model
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams, process_logits


class WrongDrafter(Drafter):
    """Always proposes token 0: almost every draft is rejected (exercises KV rewind)."""

    name = "wrong"

    def propose(self, request):
        return torch.zeros((len(request.slots), request.k), dtype=torch.long), None


@pytest.fixture(scope="module")
def target():
    return build_model("qwen3", "debug", seed=0).eval()


@pytest.fixture(scope="module")
def drafters(target):
    small = build_model("qwen3", "debug", seed=5, n_layers=1).eval()
    return {
        "ngram": lambda: build_drafter("ngram"),
        "draft_model": lambda: build_drafter("draft_model", model=small),
        "self_draft": lambda: build_drafter("draft_model", model=target),
        "wrong": WrongDrafter,
    }


DRAFTER_NAMES = ["ngram", "draft_model", "self_draft", "wrong"]


@pytest.mark.parametrize("verify", ["token", "block"])
@pytest.mark.parametrize("name", DRAFTER_NAMES)
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_is_token_for_token_identical(target, drafters, name, k, verify):
    params = SamplingParams(temperature=0, max_new_tokens=24)
    plain = RolloutEngine(target, max_batch_size=2, max_seq_len=64).generate(PROMPTS, params)
    engine = RolloutEngine(target, drafters[name](), num_draft_tokens=k, max_batch_size=3,
                           max_seq_len=64, verify=verify)
    spec = engine.generate(PROMPTS, params)
    assert [c.token_ids for c in spec] == [c.token_ids for c in plain]
    if name == "self_draft":
        assert engine.last_stats["acceptance_length"] > k  # the target agrees with itself


PARAMS = {
    "t1": SamplingParams(temperature=1.0, max_new_tokens=3, seed=11),
    "t0.7_top_p0.9": SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=3, seed=12),
    "top_k3": SamplingParams(top_k=3, max_new_tokens=3, seed=13),
}


SPECULATIVE_CASES = [(None, "token"), ("ngram", "token"), ("draft_model", "token"),
                     ("ngram", "block"), ("draft_model", "block")]


@pytest.mark.slow
@pytest.mark.parametrize("params_name", list(PARAMS))
@pytest.mark.parametrize("name, verify", SPECULATIVE_CASES)
def test_sequence_distribution_is_exact(target, drafters, name, verify, params_name):
    """20k three-token continuations over a 6-token vocabulary (216 outcomes) match the
    target's exact sequence probabilities (p-value floor 1e-6 per test)."""
    params, vocab, n = PARAMS[params_name], 6, 20_000
    prompt = [1, 2, 3, 4]
    exact, outcomes = exact_sequence_probs(target, prompt, 3, params, vocab)
    drafter = drafters[name]() if name else None
    engine = RolloutEngine(target, drafter, num_draft_tokens=2, max_batch_size=2000,
                           max_seq_len=16, vocab_size=vocab, verify=verify)
    completions = engine.generate([prompt] * n, params)
    assert chi_square_p_value(outcome_samples(completions, outcomes), exact) > P_VALUE_FLOOR


def test_stop_tokens_and_max_new_tokens(target, drafters):
    free = RolloutEngine(target, max_batch_size=4, max_seq_len=64).generate(
        PROMPTS, SamplingParams(temperature=0, max_new_tokens=20))
    stop_token = free[0].token_ids[5]
    params = SamplingParams(temperature=0, max_new_tokens=20, stop_token_ids=(stop_token,))
    engine = RolloutEngine(target, drafters["self_draft"](), num_draft_tokens=4,
                           max_batch_size=4, max_seq_len=64)
    out = engine.generate(PROMPTS, params)
    first = out[0].token_ids
    assert first[-1] == stop_token and stop_token not in first[:-1]
    assert out[0].stats["finish_reason"] == "stop"
    for completion in out:
        assert len(completion.token_ids) <= 20
        if completion.stats["finish_reason"] == "length":
            assert len(completion.token_ids) == 20  # exact even when 5 tokens land at once


def test_max_seq_len_caps_generation(target, drafters):
    engine = RolloutEngine(target, drafters["self_draft"](), num_draft_tokens=4,
                           max_batch_size=2, max_seq_len=12)
    out = engine.generate([[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=50))
    assert len(out[0].token_ids) == 9 and out[0].stats["finish_reason"] == "length"


def test_continuous_batching_refills_slots(target, drafters):
    """More prompts than slots, very different lengths: every prompt completes, in order."""
    prompts = [[1] + [7] * n for n in (1, 9, 2, 14, 3, 5, 8)]
    params = SamplingParams(temperature=0, max_new_tokens=6)
    engine = RolloutEngine(target, drafters["ngram"](), num_draft_tokens=3, max_batch_size=2,
                           max_seq_len=40)
    batched = engine.generate(prompts, params)
    one_by_one = [RolloutEngine(target, max_batch_size=1, max_seq_len=40).generate([p], params)[0]
                  for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in one_by_one]


def test_seeded_determinism_independent_of_batching(target, drafters):
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)
    runs = [RolloutEngine(target, drafters["draft_model"](), num_draft_tokens=3,
                          max_batch_size=size, max_seq_len=64).generate(PROMPTS, params)
            for size in (1, 5, 5)]
    tokens = [[c.token_ids for c in run] for run in runs]
    assert tokens[0] == tokens[1] == tokens[2]
    other = RolloutEngine(target, max_batch_size=5, max_seq_len=64).generate(
        PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=12, seed=8))
    assert [c.token_ids for c in other] != tokens[0]


@pytest.mark.parametrize("verify", ["token", "block"])
def test_a_request_gets_the_same_tokens_alone_and_in_any_batch(target, drafters, verify):
    """Counter-based random numbers: keyed by (seed, request id, position, stream), never by
    the batch slot or the other requests."""
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=2**40 + 9)
    ids = [40 + i for i in range(len(PROMPTS))]
    alone = [RolloutEngine(target, drafters["draft_model"](), num_draft_tokens=3,
                           max_batch_size=1, max_seq_len=64, verify=verify)
             .generate([p], params, request_ids=[i])[0].token_ids
             for p, i in zip(PROMPTS, ids, strict=True)]
    order = [3, 0, 4, 2, 1]
    mixed = RolloutEngine(target, drafters["draft_model"](), num_draft_tokens=3,
                          max_batch_size=3, max_seq_len=64, verify=verify).generate(
        [PROMPTS[i] for i in order] + [[1, 2]], params,
        request_ids=[ids[i] for i in order] + [7])
    assert [mixed[order.index(i)].token_ids for i in range(len(PROMPTS))] == alone
    assert len({tuple(t) for t in alone}) > 1


@pytest.mark.parametrize("name", [None, "draft_model"])
def test_behaviour_logprobs_match_a_full_forward(target, drafters, name):
    params = SamplingParams(temperature=0.8, top_k=20, max_new_tokens=10, seed=3)
    drafter = drafters[name]() if name else None
    out = RolloutEngine(target, drafter, num_draft_tokens=3, max_batch_size=3,
                        max_seq_len=64).generate(PROMPTS, params)
    for prompt, completion in zip(PROMPTS, out, strict=True):
        seq = torch.tensor([prompt + completion.token_ids])
        with torch.no_grad():
            probs = process_logits(target(seq), params)[0, len(prompt) - 1:-1]
        recomputed = probs.gather(-1, torch.tensor(completion.token_ids).unsqueeze(-1)).log()
        torch.testing.assert_close(torch.tensor(completion.logprobs), recomputed.squeeze(-1),
                                   atol=1e-5, rtol=0)


def test_bad_prompts_are_explained(target):
    engine = RolloutEngine(target, max_batch_size=2, max_seq_len=8)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="max_seq_len"):
        engine.generate([[1] * 8], SamplingParams())
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[1, 999]], SamplingParams())


@pytest.mark.slow
def test_sequence_distribution_exact_with_group_siblings(target, drafters):
    """GRPO groups of 8: drafts come from siblings' tokens (other rows' random streams)."""
    params, vocab, n = PARAMS["t1"], 6, 20_000
    prompt = [1, 2, 3, 4]
    exact, outcomes = exact_sequence_probs(target, prompt, 3, params, vocab)
    engine = RolloutEngine(target, drafters["ngram"](), num_draft_tokens=2, max_batch_size=2000,
                           max_seq_len=16, vocab_size=vocab)
    completions = engine.generate([prompt] * n, params, group_ids=[i // 8 for i in range(n)])
    assert chi_square_p_value(outcome_samples(completions, outcomes), exact) > P_VALUE_FLOOR
    assert engine.last_stats["accepted"] > 0


def test_acceptance_by_context_length_adds_up(target, drafters):
    from titan_spec.rollout.context_buckets import bucket_label, context_bucket

    assert [context_bucket(n) for n in (1, 32, 33, 64, 65, 129, 10**6)] == [0, 0, 1, 1, 2, 3, 11]
    assert [bucket_label(i) for i in (0, 1, 2, 11)] == ["1-32", "33-64", "65-128", "32769+"]
    engine = RolloutEngine(target, drafters["draft_model"](), num_draft_tokens=3,
                           max_batch_size=3, max_seq_len=64)
    engine.generate([[1] * 30, [1, 2]], SamplingParams(temperature=1.0, max_new_tokens=20,
                                                       seed=4))
    stats = engine.last_stats
    assert sum(stats["drafted_per_context"]) == stats["drafted"]
    assert sum(stats["accepted_per_context"]) == stats["accepted"]
    assert stats["drafted_per_context"][0] and stats["drafted_per_context"][1]  # 30 + 20 > 32


def test_kv_cache_takes_the_weights_dtype():
    """A bf16 model's K / V are cached in bf16 (half the bytes of the fp32 RoPE tables' dtype),
    and greedy decoding with the cache equals greedy re-decoding without it."""
    params = SamplingParams(temperature=0, max_new_tokens=6)
    fp32 = RolloutEngine(build_model("qwen3", "debug", seed=0).eval(), max_batch_size=2,
                         max_seq_len=32)
    fp32.generate(PROMPTS[:2], params)
    model = build_model("qwen3", "debug", seed=0).eval().to(torch.bfloat16)
    model.init_buffers("cpu")  # RoPE tables stay float32
    engine = RolloutEngine(model, max_batch_size=2, max_seq_len=32)
    out = engine.generate(PROMPTS[:2], params)
    assert model.rope_cos.dtype == torch.float32
    assert engine.last_stats["kv_cache_bytes"] * 2 == fp32.last_stats["kv_cache_bytes"]
    for prompt, completion in zip(PROMPTS[:2], out, strict=True):
        tokens = list(prompt)
        for _ in completion.token_ids:
            with torch.no_grad():
                logits = model(torch.tensor([tokens]))[0, -1]
            tokens.append(int(logits[:model.args.vocab_size].argmax()))
        assert tokens[len(prompt):] == completion.token_ids
