import pytest

from titan_spec.drafters import build_drafter
from titan_spec.models import build_model
from titan_spec.rollout.adaptive import AdaptiveK
from titan_spec.rollout.engine import RolloutEngine
from titan_spec.rollout.sampling import SamplingParams


def _drive(policy, batch_size, step_time, accept_prob, iterations=300):
    """Feed the policy a synthetic world: time(k) and per-position acceptance."""
    for _ in range(iterations):
        k = policy.choose(batch_size)
        accepted = 0
        while accepted < k and accepted < len(accept_prob) and accept_prob[accepted] >= 0.5:
            accepted += 1
        row = [1] * (accepted + 1) + [-1] * (k - accepted)
        policy.observe(batch_size, k, 0.0, step_time(k), [row] * batch_size)
    return max(set(policy.chosen[-50:]), key=policy.chosen[-50:].count)


def test_cheap_verification_and_good_drafts_use_max_k():
    policy = AdaptiveK(max_k=4)
    assert _drive(policy, 2, lambda k: 1.0 + 0.05 * k, [1, 1, 1, 1]) == 4


def test_expensive_verification_turns_speculation_off():
    policy = AdaptiveK(max_k=4)  # verify cost grows like (k+1) x decode: large batches
    assert _drive(policy, 64, lambda k: 1.0 * (k + 1), [1, 1, 0, 0]) == 0


def test_poor_drafts_turn_speculation_off():
    policy = AdaptiveK(max_k=4)
    assert _drive(policy, 2, lambda k: 1.0 + 0.3 * k, [0, 0, 0, 0]) == 0


def test_a_new_bucket_costs_two_exploratory_iterations():
    policy = AdaptiveK(max_k=4)
    for batch_size in (64, 32, 16, 8):
        first = []
        for _ in range(2):
            first.append(policy.choose(batch_size))
            k = first[-1]
            policy.observe(batch_size, k, 0.0, 1.0 + 0.1 * k, [[1] * (k + 1)] * batch_size)
        assert first == [0, 4]  # all drafts accepted: the best elsewhere is max_k
    # between measured points, time is interpolated
    assert policy.estimated_time(policy.bucket(8), 2) == pytest.approx(1.2)


def test_a_drafter_turned_off_elsewhere_is_probed_with_one_draft():
    policy = AdaptiveK(max_k=4)
    _drive(policy, 64, lambda k: 1.0 * (k + 1), [0, 0, 0, 0], iterations=20)
    assert policy.choose(8) == 0
    policy.observe(8, 0, 0.0, 1.0, [[1]] * 8)
    assert policy.choose(8) == 1


def test_expected_tokens():
    policy = AdaptiveK(max_k=3)
    policy.accepted, policy.drafted = [8.0, 2.0, 0.0], [10.0, 4.0, 0.0]
    assert policy.expected_tokens(0) == 1.0
    assert policy.expected_tokens(2) == pytest.approx(1 + 0.8 + 0.8 * 0.5)
    assert policy.expected_tokens(3) == pytest.approx(1 + 0.8 + 0.4 + 0.4 * 0.5)


def test_adaptive_engine_is_still_exact_under_greedy():
    target = build_model("qwen3", "debug", seed=0).eval()
    prompts = [[1, 5, 6, 7], [1, 9], [1, 2, 3]]
    params = SamplingParams(temperature=0, max_new_tokens=30)
    plain = RolloutEngine(target, max_batch_size=3, max_seq_len=64).generate(prompts, params)
    engine = RolloutEngine(target, build_drafter("draft_model", model=target),
                           num_draft_tokens=3, max_batch_size=3, max_seq_len=64, adaptive=True)
    spec = engine.generate(prompts, params)
    assert [c.token_ids for c in spec] == [c.token_ids for c in plain]
    assert set(engine.adaptive_k.chosen) >= {0, 3}  # explored, then chose
    # Measured against plain: iterations after the first k = 0 probe are timed against it.
    stats = engine.last_stats
    assert 0 < stats["compared_s"] <= stats["time_s"]
    assert stats["plain_equivalent_s"] > 0


def test_speedup_against_plain_counts_tokens_at_the_probed_cost():
    from titan_spec.rl.summary import summary_table
    from titan_spec.rollout.engine_stats import count_against_plain, new_stats

    stats = new_stats(4, 0)
    count_against_plain(stats, None, 4, 12, 0.5)  # no probe yet at this batch size: skipped
    count_against_plain(stats, 0.1, 4, 12, 0.2)  # 3 tokens per sequence: 0.3 s of plain
    count_against_plain(stats, 0.1, 2, 2, 0.1)  # a k = 0 iteration: as fast as plain
    assert stats["plain_equivalent_s"] == pytest.approx(0.4)
    assert stats["compared_s"] == pytest.approx(0.3)
    record = {"reward_mean": 0.5, "acceptance_length": 2.0, "acceptance_rate_per_position": [],
              "rollout_tokens_per_s": 1.0, "logprob_mismatch_max": 0.0, "policy_version": 1,
              "drafter_version": 1, "step_time_s": 1.0,
              "rollout_plain_equivalent_s": 0.4, "rollout_compared_s": 0.3}
    assert "1.33x (measured" in summary_table([record], None, None)
    record["rollout_compared_s"] = 0.0
    assert "drafter.adaptive = true" in summary_table([record], None, None)
