"""Speculation must not change learning: with the learner's colocated view as verifier, rollouts
with a drafter have the same reward and length distributions as plain sampling, and greedy
rollouts are identical token for token."""

import random

import pytest
import torch

from tests.helpers import FAST
from tests.stats import P_VALUE_FLOOR, two_sample_p_value
from titan_spec.data.tokenizer import encode_prompt
from titan_spec.drafters import build_drafter
from titan_spec.drafters.trainable import build_trainable_drafter
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams

MAX_NEW = 24


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A job after 100 SFT steps: its learner, task and tokenizer."""
    from titan_spec.config import load_config
    from titan_spec.job import build_rank

    folder = tmp_path_factory.mktemp("sft")
    cfg = load_config("debug_model.toml", FAST + [
        "--sft.steps=100", f"--job.dump_folder={folder}", "--checkpoint.enable=false",
        "--training.global_batch_size=32", "--drafter.kind=eagle"])
    _, job = build_rank(cfg)
    job.run()
    yield job
    job.close()


def _rollouts(job, drafter, params, count):
    rng = random.Random(11)
    problems = [job.task.sample(rng) for _ in range(count // 4)]
    problems = [p for p in problems for _ in range(4)]
    prompts = [encode_prompt(job.tokenizer, p.prompt) for p in problems]
    with job.learner.verifier() as view:
        if hasattr(drafter, "target"):
            drafter.target = view
        engine = RolloutEngine(view, drafter, num_draft_tokens=4, max_batch_size=32,
                               max_seq_len=64, vocab_size=job.tokenizer.vocab_size)
        completions = engine.generate(prompts, params, [i // 4 for i in range(len(prompts))])
    rewards = [job.task.reward(p, job.tokenizer.decode(c.token_ids))
               for p, c in zip(problems, completions, strict=True)]
    return completions, rewards, engine.last_stats


def _drafters(job):
    head = build_trainable_drafter("eagle", job.learner.model, seed=5)
    return {"eagle": head.drafter, "ngram": build_drafter("ngram")}


@pytest.mark.parametrize("kind", ["eagle", "ngram"])
def test_rewards_and_lengths_match_plain_sampling(job, kind):
    params = SamplingParams(max_new_tokens=MAX_NEW, stop_token_ids=(2,), seed=3)
    plain, plain_rewards, _ = _rollouts(job, None, params, 800)
    spec, spec_rewards, stats = _rollouts(job, _drafters(job)[kind], params, 800)
    assert stats["acceptance_length"] > 1.0  # speculation did happen
    assert 0.02 < sum(plain_rewards) / len(plain_rewards) < 0.95  # rewards are informative
    reward_counts = [torch.tensor([r.count(0.0), r.count(1.0)])
                     for r in (plain_rewards, spec_rewards)]
    assert two_sample_p_value(*reward_counts) > P_VALUE_FLOOR
    length_counts = [torch.bincount(torch.tensor([len(c.token_ids) for c in run]),
                                    minlength=MAX_NEW + 1) for run in (plain, spec)]
    assert two_sample_p_value(*length_counts) > P_VALUE_FLOOR


def test_greedy_rollouts_identical(job):
    params = SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW, stop_token_ids=(2,))
    plain, _, _ = _rollouts(job, None, params, 64)
    for kind, drafter in _drafters(job).items():
        spec, _, _ = _rollouts(job, drafter, params, 64)
        assert [c.token_ids for c in spec] == [c.token_ids for c in plain], kind
