"""Vocabulary-parallel verification: on 2 and 4 gloo ranks, each holding some logit columns, the
sampling transform gives the single-rank probabilities of those columns bit for bit, and the
rejection sampler emits the single-rank tokens and logprobs bit for bit, for both rules,
stochastic and deterministic drafters, temperature, top-k, top-p, greedy and a padded
vocabulary; through the engine under learner tp = 2 the sequence distribution is exact."""

import pytest
import torch

from tests.exact import exact_sequence_probs, outcome_samples
from tests.helpers import build_learner, run_function
from tests.stats import P_VALUE_FLOOR, chi_square_p_value

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]

SAMPLINGS = {
    "t1": dict(temperature=1.0),
    "t0.6": dict(temperature=0.6),
    "top_k5": dict(top_k=5),
    "top_k16": dict(top_k=16, temperature=0.8),  # more than one shard holds
    "top_p0.8": dict(top_p=0.8),
    "top_p0.95_top_k20": dict(top_p=0.95, top_k=20, temperature=1.3),
    "greedy": dict(temperature=0.0),
}
VOCAB, PADDED, BATCH, K = 37, 40, 48, 3  # uneven shards; ids >= 37 are padding


def _inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    # Rounded to halves: ties in the argmax and at the top-p boundary.
    target_logits = (torch.randn(BATCH, K + 1, PADDED, generator=generator) * 4).round() / 2
    draft_logits = target_logits[:, :K] + torch.randn(BATCH, K, PADDED, generator=generator)
    draft_ids = torch.randint(0, VOCAB, (BATCH, K), generator=generator)
    agree = torch.rand(BATCH, K, generator=generator) < 0.6  # many drafts the target likes
    draft_ids = torch.where(agree, target_logits[:, :K, :VOCAB].argmax(-1), draft_ids)
    return target_logits, draft_logits, draft_ids


def _sharded_equals_single(rank, world_size):
    import torch.distributed as dist

    from titan_spec.kernels.counter_rng import RandomKeys
    from titan_spec.kernels.rejection_sampler import rejection_sample
    from titan_spec.kernels.vocab_shard import VocabShard
    from titan_spec.rollout.sampling import SamplingParams, process_logits

    shard = VocabShard.of_rank(VOCAB, rank, world_size, dist.group.WORLD)
    columns = slice(shard.start, shard.stop)
    mismatches = []
    for case, (name, options) in enumerate(SAMPLINGS.items()):
        sampling = SamplingParams(**options)
        target_logits, draft_logits, draft_ids = _inputs(case)
        keys = RandomKeys.of(1234 + case, range(7, 7 + BATCH), range(BATCH))
        target = process_logits(target_logits, sampling, VOCAB)[..., :VOCAB]
        local_target = process_logits(target_logits[..., columns], sampling, VOCAB, shard)
        if not torch.equal(local_target, target[..., columns]):
            mismatches.append((name, "target probs"))
        draft = process_logits(draft_logits, sampling, VOCAB)[..., :VOCAB]
        for rule in ("token", "block"):
            for drafts in ("stochastic", "deterministic"):
                full_draft = draft if drafts == "stochastic" else None
                local_draft = None if full_draft is None else full_draft[..., columns]
                single = rejection_sample(draft_ids, full_draft, target, rule=rule, keys=keys)
                sharded = rejection_sample(draft_ids, local_draft, local_target, rule=rule,
                                           keys=keys, shard=shard)
                if not torch.equal(single, sharded):
                    mismatches.append((name, rule, drafts, "tokens"))
                ids = single.clamp(min=0)
                single_logprobs = target.gather(-1, ids.unsqueeze(-1)).squeeze(-1).log()
                if not torch.equal(shard.at(local_target, ids).log(), single_logprobs):
                    mismatches.append((name, rule, drafts, "logprobs"))
    return mismatches


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_verification_is_bit_equal_to_one_rank(world_size, tmp_path):
    assert run_function(world_size, _sharded_equals_single, tmp_path) == []


ENGINE_CASES = [("draft_model", "token", dict(temperature=0.7, top_p=0.9)),
                ("draft_model", "block", dict(top_k=3)),
                (None, "token", dict(temperature=1.0))]


def _engine_under_tp(rank, world_size, samples):
    from titan_spec.config.schema import Rollout
    from titan_spec.drafters import build_drafter
    from titan_spec.drafters.runtime import vocab_shard
    from titan_spec.models import build_model
    from titan_spec.parallel.verifier import colocated_verifier
    from titan_spec.rollout.engine import RolloutEngine
    from titan_spec.rollout.sampling import SamplingParams

    model, dims, spec = build_learner("debug", {"dp_shard": 1, "tp": 2}, world_size, seed=0)
    prompt, vocab = [1, 2, 3, 4], 6
    shard = vocab_shard(dims, vocab, Rollout())
    results = []
    with torch.no_grad(), colocated_verifier(model, dims, spec.builder) as view:
        for case, (drafter_name, rule, options) in enumerate(ENGINE_CASES):
            sampling = SamplingParams(max_new_tokens=3, seed=21 + case, **options)
            exact, outcomes = exact_sequence_probs(view, prompt, 3, sampling, vocab)
            small = build_model("qwen3", "debug", seed=5, n_layers=1).eval()
            drafter = build_drafter(drafter_name, model=small) if drafter_name else None
            engine = RolloutEngine(view, drafter, num_draft_tokens=2, max_batch_size=2000,
                                   max_seq_len=16, vocab_size=vocab, verify=rule,
                                   vocab_shard=shard)
            completions = engine.generate([prompt] * samples, sampling)
            results.append((outcome_samples(completions, outcomes), exact))
    return {"shard": (shard.start, shard.stop), "results": results}


def test_engine_under_tp_samples_the_exact_sequence_distribution(tmp_path):
    """20k three-token continuations over a 6-token vocabulary split 3 + 3 over tp = 2."""
    out = run_function(2, _engine_under_tp, tmp_path, 20_000)
    assert out["shard"] == (0, 3)  # rank 0's half: the vocabulary really was split
    for samples, exact in out["results"]:
        assert chi_square_p_value(samples, exact) > P_VALUE_FLOOR
