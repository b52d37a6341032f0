"""Async RL jobs end to end: the MoE config on a tensor-parallel rollout replica, the lag bound
under a slow learner / slow rollout side, checkpoint and resume, the drop policy, in-flight
weight updates. (The 4-rank MoE job on two replicas is the golden async test.)"""

import pytest

from tests.helpers import CONTROL_SITES, assert_planes, read_metrics, run_function, train_job

ASYNC_FAST = [
    "--sft.steps=2", "--sft.eval_problems=0", "--rl.steps=4", "--rl.prompts_per_step=4",
    "--rl.group_size=2", "--rl.eval_problems=0", "--rollout.max_new_tokens=12",
    "--rollout.max_batch_size=4", "--drafter.distill_steps=2", "--training.seq_len=64",
    "--task.arithmetic.max_digits=2", "--metrics.enable_tensorboard=false",
]


def _slowed(cls, name: str, seconds: float) -> None:
    """Make a public method of cls take `seconds` longer (in this spawned rank only)."""
    import time

    method = getattr(cls, name)

    def slow(self, *args, **kwargs):
        time.sleep(seconds)
        return method(self, *args, **kwargs)
    setattr(cls, name, slow)


def _train(rank, world_size, config, overrides, slow_learner_s=0.0, slow_rollout_s=0.0,
           slow_iteration_s=0.0):
    from titan_spec.drafters.eagle import EagleDrafter
    from titan_spec.learner import Learner
    from titan_spec.rl.async_rl import RolloutWorker

    if slow_iteration_s and rank == world_size - 1:  # the rollout rank drafts (decodes) slowly
        _slowed(EagleDrafter, "propose", slow_iteration_s)

    if slow_rollout_s:
        _slowed(RolloutWorker, "generate", slow_rollout_s)
    if slow_learner_s:
        _slowed(Learner, "policy_step", slow_learner_s)
    train_job(config, ASYNC_FAST + list(overrides))


def _rl(folder):
    return [r for r in read_metrics(folder) if r["phase"] == "rl"]


@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_async_moe_config_on_a_tensor_parallel_replica(tmp_path, monkeypatch):
    """The learner trains with EP; the rollout mesh generates with every expert's columns
    split over one tp = 2 replica, whose ranks agree on when to switch weights under the drop
    rule. (Two whole replicas under the wait rule: the golden async test.) Queue messages,
    headers, the start point and the stop agreement travel on the control plane."""
    monkeypatch.setenv("TITAN_SPEC_COMM_LOG", str(tmp_path / "comm.jsonl"))
    run_function(4, _train, tmp_path, "debug_moe_async.toml",
                 [f"--job.dump_folder={tmp_path}", "--rl.steps=3", "--async_rl.rollout_tp=2",
                  "--async_rl.stale_batches=drop", "--rl.rollout_is=mis"])
    records = _rl(tmp_path)
    assert [r["step"] for r in records] == [3, 4, 5]
    for key in ("policy_lag_mean", "policy_lag_max", "is_weight_mean", "is_weight_max",
                "time_waiting_for_rollout_s", "queue_depth", "acceptance_length",
                "rollout_side_generate_s", "rollout_side_waiting_for_weights_s",
                "drafter_version", "weight_sync_bytes", "is_clipped_fraction",
                "logprob_mismatch_p99", "behaviour_kl", "rollout_ratio_max"):
        assert key in records[0], key
    assert records[0]["mismatch_tokens"] > 0  # step 1 is on-policy; later ones are lagged
    # masked IS at every lag: on-policy fp32 ratios are 1 to ~1e-6, inside [0.5, 2]
    assert abs(records[0]["is_weight_max"] - 1) < 1e-4 and records[0]["is_clipped_fraction"] == 0
    assert all(r["policy_lag_max"] <= 1 or r["dropped_fraction"] == 1.0 for r in records)
    assert_planes(tmp_path / "comm.jsonl", CONTROL_SITES,  # weights and EP tokens: on device
                  {"titan_spec.parallel.weight_sync.receive",
                   "titan_spec.parallel.expert_parallel.forward"})


@pytest.mark.distributed
@pytest.mark.timeout(400)
@pytest.mark.parametrize("slow", ["learner", "rollout"])
def test_lag_bound_under_slow_side(slow, tmp_path):
    slow_learner, slow_rollout = (0.4, 0.0) if slow == "learner" else (0.0, 0.4)
    run_function(2, _train, tmp_path, "debug_model.toml",
                 [f"--job.dump_folder={tmp_path}", "--async_rl.rollout_ranks=1",
                  "--checkpoint.enable=false", "--async_rl.max_policy_lag=2"],
                 slow_learner, slow_rollout)
    records = _rl(tmp_path)
    assert [r["policy_lag_max"] for r in records] == [0, 1, 2, 2]
    if slow == "rollout":  # batch 1 starts only once version 0 has arrived
        assert records[0]["time_waiting_for_rollout_s"] >= 0.4


@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_async_checkpoint_and_resume(tmp_path):
    """The learner alone saves (DCP over the learner group); a resumed run restarts the
    schedule from the loaded version: its first batch is on-policy."""
    from titan_spec.components.checkpoint import list_checkpoints, verify

    common = [f"--job.dump_folder={tmp_path}", "--async_rl.rollout_ranks=1",
              "--checkpoint.enable=true", "--checkpoint.interval=100"]
    run_function(2, _train, tmp_path, "debug_model.toml", common + ["--rl.steps=2"])
    run_function(2, _train, tmp_path, "debug_model.toml", common + ["--rl.steps=4"])
    # resumed at the last step: nothing to train, and the rollout rank expects no weights
    run_function(2, _train, tmp_path, "debug_model.toml", common + ["--rl.steps=4"])
    saved = list_checkpoints(tmp_path / "checkpoint")
    assert [step for step, _ in saved] == [4, 6]
    for _, path in saved:
        verify(path)
    records = _rl(tmp_path)
    assert [r["step"] for r in records] == [3, 4, 5, 6]
    assert [r["policy_version"] for r in records] == [0, 0, 2, 2]
    assert [r["policy_lag_max"] for r in records] == [0, 1, 0, 1]
    assert all(r["rollout_side_waiting_for_weights_s"] >= 0 for r in records)


@pytest.mark.distributed
@pytest.mark.timeout(400)
@pytest.mark.parametrize("replicas", [1, 3])
def test_drop_policy_never_trains_on_stale_groups(replicas, tmp_path):
    """A slow learner and a rollout side that never waits: batches generated before the new
    weights arrived come in too old and are dropped, the rest train within the bound, and the
    run ends cleanly (every sync sent is received; with 3 replicas each has its own
    broadcast, so one blocked on its queue cannot hold up another's weights)."""
    run_function(1 + replicas, _train, tmp_path, "debug_model.toml",
                 [f"--job.dump_folder={tmp_path}", f"--async_rl.rollout_ranks={replicas}",
                  "--checkpoint.enable=false", "--async_rl.max_policy_lag=0",
                  "--async_rl.stale_batches=drop", "--rl.steps=5",
                  f"--rl.prompts_per_step={replicas * 2}"], 0.4, 0.0)
    records = _rl(tmp_path)
    assert len(records) == 5 and records[0]["dropped_fraction"] == 0.0
    assert any(r["dropped_fraction"] > 0 for r in records)
    if replicas == 1:  # one version per batch
        assert all(r["dropped_fraction"] in (0.0, 1.0) for r in records)
    for r in records:
        if r["dropped_fraction"] == 0.0:
            assert r["policy_lag_max"] == 0 and "loss" in r
        elif r["dropped_fraction"] == 1.0:
            assert r["policy_lag_max"] > 0 and "loss" not in r  # nothing left to train on


@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_inflight_weight_updates_switch_mid_batch(tmp_path):
    """A slowly decoding rollout rank takes the learner's new weights between decode
    iterations; batches are stamped with the version they started from, so the trained ones
    stay within the lag bound."""
    run_function(2, _train, tmp_path, "debug_model.toml",
                 [f"--job.dump_folder={tmp_path}", "--async_rl.rollout_ranks=1",
                  "--checkpoint.enable=false", "--async_rl.max_policy_lag=1",
                  "--async_rl.stale_batches=drop", "--async_rl.inflight_weight_updates=true"],
                 0.0, 0.0, 0.03)
    records = _rl(tmp_path)
    assert len(records) == 4
    assert any(r["weight_updates_in_batch"] > 0 for r in records)
    assert all(r["policy_lag_max"] <= 1 or r["dropped_fraction"] == 1.0 for r in records)
