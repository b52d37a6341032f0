"""The colocated RL job end to end: SFT warm-start, drafter warm-start, GRPO steps with
speculative rollouts verified by the learner, on one process and on 2 tensor-parallel ranks."""

import logging

import pytest

from tests.helpers import RL_FAST, assert_planes, read_metrics, run_function, train_job

PER_STEP = ["reward_mean", "accuracy", "response_len_mean", "rollout_tokens_per_s",
            "acceptance_length", "acceptance_rate_per_position", "logprob_mismatch_max",
            "logprob_mismatch_mean", "time_rollout_s", "time_logprob_s", "time_train_s",
            "step_time_s", "policy_version", "drafter_version", "drafter_loss",
            "acceptance_rate_by_context", "drafter_kind"]


def _train(rank, world_size, overrides):
    train_job("debug_model.toml", RL_FAST + list(overrides))


def _rl_records(folder):
    return [r for r in read_metrics(folder) if r["phase"] == "rl"]


def _check_records(records, k=4):
    assert [r["step"] for r in records] == [4, 5]
    for record in records:
        assert set(PER_STEP) <= set(record)
        assert len(record["acceptance_rate_per_position"]) == k
        assert record["logprob_mismatch_max"] <= 1e-5  # colocated fp32
        assert record["acceptance_length"] >= 1.0
        assert record["acceptance_rate_by_context"]  # drafts land in some context bucket
        assert all(0 <= rate <= 1 for rate in record["acceptance_rate_by_context"].values())
    assert [r["policy_version"] for r in records] == [0, 1]
    assert [r["drafter_version"] for r in records] == [0, 1]


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_colocated_rl_with_tensor_parallel_verifier(tmp_path, monkeypatch):
    """tp = 2: the verifier view stays tensor-parallel (2 FSDP2 ranks: the golden sync test);
    truncated importance weights at lag 0; its stop agreement and barriers travel on the
    control plane."""
    monkeypatch.setenv("TITAN_SPEC_COMM_LOG", str(tmp_path / "comm.jsonl"))
    run_function(2, _train, tmp_path, ["--parallelism.tp=2", "--parallelism.dp_shard=1",
                                       f"--job.dump_folder={tmp_path}", "--rl.rollout_is=tis"])
    records = _rl_records(tmp_path)
    _check_records(records)
    for record in records:  # truncated IS at lag 0 (fp32 here: every weight within 1e-5 of 1)
        assert abs(record["is_weight_mean"] - 1) < 1e-5 and record["is_clipped_fraction"] == 0
        assert record["logprob_mismatch_p50"] <= record["logprob_mismatch_p99"] <= 1e-5
    assert_planes(tmp_path / "comm.jsonl", {"titan_spec.components.stop_signal.agreed",
                                            "titan_spec.runtime.close_distributed"})


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_eagle3_under_tensor_parallelism_and_its_public_layout(tmp_path):
    """EAGLE-3 (reduced draft vocabulary, TTT warm-up, online adaptation) in the main job on
    2 tensor-parallel ranks; its head is exported in the public layout, and a new run starts
    from that folder with no warm-up."""
    from titan_spec.formats.eagle3_hf import load_eagle3_head
    from titan_spec.models import build_model

    run_function(2, _train, tmp_path, ["--parallelism.tp=2", "--parallelism.dp_shard=1",
                                       "--drafter.kind=eagle3",
                                       "--drafter.eagle3.draft_vocab_size=40",
                                       "--checkpoint.last_save_in_hf=true",
                                       f"--job.dump_folder={tmp_path}/tp"])
    _check_records(_rl_records(f"{tmp_path}/tp"))
    (exported,) = (tmp_path / "tp" / "checkpoint").glob("step-*-hf-drafter")
    head = load_eagle3_head(exported, build_model("qwen3", "debug").args)
    assert head.shape.draft_vocab_size == 40 and head.t2d.sum() == 40
    # The conversion tool does not convert an EAGLE-3 drafter yet: one clear error, no output.
    from tools.convert_checkpoint import main as convert

    step = max((p for p in (tmp_path / "tp" / "checkpoint").glob("step-*")
                if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    assert convert([str(step), str(tmp_path / "converted"), "--to", "hf"]) == 2
    assert not (tmp_path / "converted").exists()
    _train(0, 1, [f"--job.dump_folder={tmp_path}/reload", "--drafter.kind=eagle3",
                  f"--drafter.init_from={exported}"])
    assert "drafter_warmup" not in [r["phase"] for r in read_metrics(f"{tmp_path}/reload")]
    _check_records(_rl_records(f"{tmp_path}/reload"))


def test_plain_ngram_and_adaptive_rollouts(tmp_path, capsys):
    _train(0, 1, [f"--job.dump_folder={tmp_path}/plain", "--drafter.kind=none"])
    plain = _rl_records(f"{tmp_path}/plain")
    assert all(r["acceptance_length"] == 1.0 for r in plain)
    assert all(r["acceptance_rate_per_position"] == [] for r in plain)
    assert "drafter_warmup" not in [r["phase"] for r in read_metrics(f"{tmp_path}/plain")]
    # n-gram: it drafts at every position, has nothing to learn, so its version stays 0.
    _train(0, 1, [f"--job.dump_folder={tmp_path}/ngram", "--drafter.kind=ngram"])
    ngram = _rl_records(f"{tmp_path}/ngram")
    assert [len(r["acceptance_rate_per_position"]) for r in ngram] == [4, 4]
    assert [r["drafter_version"] for r in ngram] == [0, 0] and "drafter_loss" not in ngram[0]
    assert all(r["logprob_mismatch_max"] <= 1e-5 for r in ngram)
    # The whole job on one process with adaptive k over the online EAGLE head: still exact,
    # the head adapts, evals before and after RL, the summary table at the end.
    _train(0, 1, [f"--job.dump_folder={tmp_path}/adaptive", "--drafter.adaptive=true"])
    _check_records(_rl_records(f"{tmp_path}/adaptive"))
    phases = [r["phase"] for r in read_metrics(f"{tmp_path}/adaptive")]
    assert phases.count("eval") == 2 and "drafter_warmup" in phases
    assert "RL summary" in capsys.readouterr().out


def test_drafter_init_from_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        _train(0, 1, [f"--job.dump_folder={tmp_path}",
                      f"--drafter.init_from={tmp_path}/none.pt"])
    with pytest.raises(ValueError, match="has no parameters"):
        _train(0, 1, [f"--job.dump_folder={tmp_path}", "--drafter.kind=ngram",
                      f"--drafter.init_from={tmp_path}/none.pt"])


def test_collapsed_drafter_is_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="titan_spec"):
        _train(0, 1, [f"--job.dump_folder={tmp_path}", "--drafter.distill_steps=0",
                      "--drafter.online=false", "--drafter.collapse_threshold=0.99"])
    assert "DRAFTER ACCEPTANCE COLLAPSED" in caplog.text
    assert all(r["drafter_collapsed"] for r in _rl_records(tmp_path))
