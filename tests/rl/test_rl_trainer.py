"""The colocated RL job end to end: SFT warm-start, drafter warm-start, GRPO steps with
speculative rollouts verified by the learner, on one process and on 2 ranks (FSDP2, TP)."""

import logging

import pytest

from tests.helpers import read_metrics, run_function, train_job

RL_FAST = [
    "--sft.steps=3", "--sft.eval_problems=0", "--rl.steps=2", "--rl.prompts_per_step=4",
    "--rl.group_size=2", "--rl.eval_problems=4", "--rollout.max_new_tokens=12",
    "--rollout.max_batch_size=4", "--drafter.warmup_steps=2", "--training.seq_len=64",
    "--task.max_digits=2", "--metrics.enable_tensorboard=false", "--checkpoint.interval=1000",
]
PER_STEP = ["reward_mean", "accuracy", "response_len_mean", "rollout_tokens_per_s",
            "acceptance_length", "acceptance_rate_per_position", "logprob_mismatch_max",
            "logprob_mismatch_mean", "time_rollout_s", "time_logprob_s", "time_train_s",
            "step_time_s", "policy_version", "drafter_version", "drafter_loss"]


def _train(rank, world_size, overrides):
    return train_job("debug_model.toml", RL_FAST + list(overrides))


def _rl_records(folder):
    return [r for r in read_metrics(folder) if r["phase"] == "rl"]


def _check_records(records, k=4):
    assert [r["step"] for r in records] == [4, 5]
    for record in records:
        assert set(PER_STEP) <= set(record)
        assert len(record["acceptance_rate_per_position"]) == k
        assert record["logprob_mismatch_max"] <= 1e-5  # colocated fp32
        assert record["acceptance_length"] >= 1.0
    assert [r["policy_version"] for r in records] == [0, 1]
    assert [r["drafter_version"] for r in records] == [0, 1]


def test_single_process_rl_job(tmp_path, capsys):
    _train(0, 1, [f"--job.dump_folder={tmp_path}"])
    _check_records(_rl_records(tmp_path))
    phases = [r["phase"] for r in read_metrics(tmp_path)]
    assert phases.count("eval") == 2 and "drafter_warmup" in phases
    assert "RL summary" in capsys.readouterr().out


@pytest.mark.distributed
@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", [["--parallelism.dp_shard=2"],
                                    ["--parallelism.tp=2", "--parallelism.dp_shard=1"]],
                         ids=["fsdp2", "tp2"])
def test_colocated_rl_on_two_ranks(layout, tmp_path):
    run_function(2, _train, tmp_path, layout + [f"--job.dump_folder={tmp_path}"])
    _check_records(_rl_records(tmp_path))


def test_resume_mid_rl_keeps_drafter_and_versions(tmp_path):
    first = [f"--job.dump_folder={tmp_path}", "--checkpoint.interval=1"]
    _train(0, 1, first + ["--rl.steps=1"])
    _train(0, 1, first)  # rl.steps=2: resumes at step 4, runs step 5
    records = _rl_records(tmp_path)
    assert [r["step"] for r in records] == [4, 5]
    assert records[-1]["policy_version"] == 1 and records[-1]["drafter_version"] == 1
    phases = [r["phase"] for r in read_metrics(tmp_path)]
    assert phases.count("drafter_warmup") == 1  # the resumed run kept the trained drafter


def test_plain_and_ngram_rollouts(tmp_path):
    _train(0, 1, [f"--job.dump_folder={tmp_path}/plain", "--drafter.kind=none"])
    plain = _rl_records(f"{tmp_path}/plain")
    assert all(r["acceptance_length"] == 1.0 for r in plain)
    assert all(r["acceptance_rate_per_position"] == [] for r in plain)
    _train(0, 1, [f"--job.dump_folder={tmp_path}/ngram", "--drafter.kind=ngram"])
    assert len(_rl_records(f"{tmp_path}/ngram")) == 2
    _train(0, 1, [f"--job.dump_folder={tmp_path}/adaptive", "--drafter.adaptive=true"])
    assert len(_rl_records(f"{tmp_path}/adaptive")) == 2


def test_rl_config_errors():
    from titan_spec.config import ConfigError, load_config
    from titan_spec.trainer import preflight

    with pytest.raises(ConfigError, match="group_size"):
        load_config("debug_model.toml", ["--rl.group_size=1"])
    with pytest.raises(ConfigError, match="drafter.adaptive"):
        load_config("debug_model.toml", ["--drafter.adaptive=true", "--parallelism.tp=2"])
    with pytest.raises(ValueError, match="divisible by the 2 data-parallel"):
        preflight(load_config("debug_model.toml", ["--rl.prompts_per_step=3"]), 2)
    with pytest.raises(ValueError, match="temperature"):
        preflight(load_config("debug_model.toml", ["--rollout.temperature=0"]), 1)
    with pytest.raises(ValueError, match="minibatches"):
        preflight(load_config("debug_model.toml", ["--rl.minibatches=3"]), 2)


def test_drafter_init_from_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        _train(0, 1, [f"--job.dump_folder={tmp_path}",
                      f"--drafter.init_from={tmp_path}/none.pt"])
    with pytest.raises(ValueError, match="has no parameters"):
        _train(0, 1, [f"--job.dump_folder={tmp_path}", "--drafter.kind=ngram",
                      f"--drafter.init_from={tmp_path}/none.pt"])


def test_collapsed_drafter_is_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="titan_spec"):
        _train(0, 1, [f"--job.dump_folder={tmp_path}", "--drafter.warmup_steps=0",
                      "--drafter.online=false", "--drafter.collapse_threshold=0.99"])
    assert "DRAFTER ACCEPTANCE COLLAPSED" in caplog.text
    assert all(r["drafter_collapsed"] for r in _rl_records(tmp_path))
