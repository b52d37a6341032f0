"""Golden runs: the main job (sync, 2 FSDP2 ranks) and the async MoE job (2 learner ranks with
EP + 2 rollout replicas) on short fixed-seed runs; their metrics.jsonl must equal the recorded
ones key by key (timings excepted). This is what keeps a refactor honest: behaviour did not
change if these numbers did not. The sync run also switches on the RL options the shipped
config leaves off (several minibatches, the KL term, dynamic sampling) so that they run
through the real loop."""

import pytest

from tests.helpers import check_golden, read_metrics, run_function, train_job

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

# 40 SFT steps on one-digit sums: enough for rewards of about a half, so that advantages, the
# loss, the KL term and the drafter's adaptation all carry real numbers.
SHORT = ["--sft.steps=40", "--task.arithmetic.max_digits=1", "--rl.prompts_per_step=4",
         "--rl.group_size=2", "--rollout.max_new_tokens=12", "--rollout.max_batch_size=4",
         "--drafter.distill_steps=2", "--training.seq_len=64",
         "--metrics.enable_tensorboard=false"]
SYNC = SHORT + ["--sft.eval_problems=4", "--rl.steps=3",
                "--rl.eval_problems=4", "--checkpoint.interval=1000", "--rl.minibatches=2",
                "--rl.kl_coef=0.01", "--rl.dynamic_sampling=true", "--parallelism.dp_shard=2"]
ASYNC = SHORT + ["--sft.eval_problems=0", "--rl.steps=3", "--rl.eval_problems=0"]


def _job(rank, world_size, config, overrides):
    train_job(config, overrides)


@pytest.mark.timeout(300)
def test_main_job_sync_two_ranks(tmp_path):
    run_function(2, _job, tmp_path, "debug_model.toml", SYNC + [f"--job.dump_folder={tmp_path}"])
    records = read_metrics(tmp_path)
    rl = [r for r in records if r["phase"] == "rl"]
    assert [r["policy_version"] for r in rl] == [0, 2, 4]  # two minibatches: two updates a step
    assert all("kl" in r for r in rl) and any(r["kl"] > 0 for r in rl)
    assert any(0 < r["reward_mean"] < 1 for r in rl)
    check_golden("main_job_sync_2ranks", records)


@pytest.mark.timeout(400)
def test_async_moe_job_four_ranks(tmp_path):
    run_function(4, _job, tmp_path, "debug_moe_async.toml",
                 ASYNC + [f"--job.dump_folder={tmp_path}"])
    records = read_metrics(tmp_path)
    rl = [r for r in records if r["phase"] == "rl"]
    assert [r["policy_lag_max"] for r in rl] == [0, 1, 1]
    assert [r["policy_version"] for r in rl] == [0, 0, 1]
    assert any(0 < r["reward_mean"] < 1 for r in rl)
    check_golden("async_moe_job_4ranks", records)
