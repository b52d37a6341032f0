"""The main job in bf16 (`parallelism.param_dtype=bfloat16`, FSDP2 on 2 ranks) with the
drafters that read the target's hidden states: their heads keep fp32 weights and meet the bf16
target at both ends (its hidden states in, its LM head out). Before, the first warm-up step
failed with `expected m1 and m2 to have the same dtype`."""

import pytest

from tests.helpers import RL_FAST, read_metrics, run_function, train_job

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(400)]


def _job(rank, world_size, overrides):
    train_job("debug_model.toml", RL_FAST + list(overrides))


@pytest.mark.parametrize("kind", ["eagle", "mtp"])
def test_bf16_rl_job_with_a_hidden_state_drafter(kind, tmp_path):
    # the eagle run also keeps the LM head in fp32 (the verifier view and the drafter meet it)
    head = ["--parallelism.lm_head_fp32=true"] if kind == "eagle" else []
    run_function(2, _job, tmp_path, ["--parallelism.param_dtype=bfloat16",
                                     f"--drafter.kind={kind}", f"--job.dump_folder={tmp_path}",
                                     *head])
    records = read_metrics(tmp_path)
    warmup = [r for r in records if r["phase"] == "drafter_warmup"]
    rl = [r for r in records if r["phase"] == "rl"]
    assert len(warmup) == 1 and len(rl) == 2
    assert all(r["acceptance_length"] >= 1.0 and r["drafter_kind"] == kind for r in rl)
