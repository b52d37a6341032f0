"""The 235B dry run: plans on a fake process group of 256 ranks, on CPU, in seconds; its
numbers for one layer, the rollout side's whole weights, KV cache and drafter buffer in its
dtype, and the sharded weight sync's bytes per rank match an independent hand calculation."""

import json
import math
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)

# Qwen3-235B-A22B, from its config.json
DIM, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, MOE_HIDDEN, LAYERS = 4096, 64, 4, 128, 128, 1536, 94
VOCAB = 151936
DENSE_HIDDEN = 12288  # the dense SwiGLU width an EAGLE head's block takes


def _rank0_rows(rows: int, shards: int) -> int:
    """Rows FSDP2 gives rank 0 of a dim-0 split (torch.chunk: ceil-sized chunks)."""
    return min(rows, math.ceil(rows / shards))


def _hand_learner_layer0(dp_shard: int, ep: int) -> int:
    attn = (_rank0_rows(HEADS * HEAD_DIM, dp_shard) * DIM  # wq
            + 2 * _rank0_rows(KV_HEADS * HEAD_DIM, dp_shard) * DIM  # wk, wv
            + _rank0_rows(DIM, dp_shard) * HEADS * HEAD_DIM  # wo
            + 2 * _rank0_rows(HEAD_DIM, dp_shard))  # q/k norms
    norms = 2 * _rank0_rows(DIM, dp_shard)
    router = _rank0_rows(EXPERTS, dp_shard) * DIM
    # experts: EP first (experts / ep), then FSDP over the ranks ep leaves (dp_shard / ep); with
    # fewer local experts than those ranks, FSDP splits the expert hidden dim (1536 / 24) instead
    local, shards = EXPERTS // ep, dp_shard // ep
    if local % shards == 0:
        experts = 3 * _rank0_rows(local, shards) * DIM * MOE_HIDDEN
    else:
        assert MOE_HIDDEN % shards == 0 and DIM % shards
        experts = 3 * local * DIM * (MOE_HIDDEN // shards)
    return attn + norms + router + experts


def _hand_rollout_layer0(tp: int) -> int:
    """Heads, SwiGLU and expert columns split tp ways; one of the 4 KV heads per rank."""
    kv_heads = max(1, KV_HEADS // tp)
    attn = 2 * HEADS * HEAD_DIM * DIM // tp + 2 * kv_heads * HEAD_DIM * DIM
    return attn + 2 * HEAD_DIM + 2 * DIM + EXPERTS * DIM + 3 * EXPERTS * DIM * MOE_HIDDEN // tp


def test_235b_dry_run(tmp_path):
    proc = subprocess.run(["./run_train.sh", "--config", "235b_moe_async.toml",
                           "--job.dry_run=true", f"--job.dump_folder={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "dry run: qwen3/235B-A22B" in proc.stdout and " NO " not in proc.stdout
    plan = json.loads((tmp_path / "dry_run.json").read_text())
    learner, rollout = plan["rows"]
    assert (learner["ranks"], rollout["ranks"]) == (192, 64)
    layer0 = sum(n for name, n in plan["learner_local_numel"].items()
                 if name.startswith("layers.0."))
    assert layer0 == _hand_learner_layer0(dp_shard=192, ep=8)
    assert rollout["layer0_numel"] == _hand_rollout_layer0(tp=8)
    # params / grads / optimizer are 4 / 4 / 8 bytes per local element
    total = sum(plan["learner_local_numel"].values())
    assert learner["params_gib"] == pytest.approx(total * 4 / 2**30)
    assert learner["optimizer_gib"] == pytest.approx(total * 8 / 2**30)
    # The rollout side in its dtype, bf16 (2 bytes): tp = 8 slices of every layer, the
    # embedding, the head and the final norm whole; the KV cache and the EAGLE drafter's buffer
    # of final hidden states for 64 sequences of 512 + 8192 tokens, 1 KV head per rank.
    weights = (LAYERS * _hand_rollout_layer0(tp=8) + 2 * VOCAB * DIM + DIM) * 2
    assert rollout["weights_gib"] == pytest.approx(weights / 2**30)
    kv = 2 * LAYERS * 64 * (512 + 8192) * 1 * HEAD_DIM * 2
    assert rollout["kv_cache_gib"] == pytest.approx(kv / 2**30)
    assert rollout["draft_hidden_gib"] == pytest.approx(64 * (512 + 8192) * DIM * 2 / 2**30)
    # The EAGLE head (fc over 2 x dim, one dense decoder block, 3 norms of its own) in fp32 on
    # every rank; learner ranks also keep its gradients and AdamW moments (it adapts online).
    block = (2 * HEADS * HEAD_DIM * DIM + 2 * KV_HEADS * HEAD_DIM * DIM + 2 * HEAD_DIM
             + 2 * DIM + 3 * DIM * DENSE_HIDDEN)
    head = 2 * DIM * DIM + block + 3 * DIM
    assert plan["drafter_params"] == head
    assert rollout["drafter_gib"] == pytest.approx(head * 4 / 2**30)
    assert learner["drafter_gib"] == pytest.approx(head * 16 / 2**30)
    assert rollout["total_gib"] == pytest.approx((weights + kv + head * 4) / 2**30
                                                 + rollout["draft_hidden_gib"])
    assert all(row["fits"] for row in plan["rows"])
    # The sharded weight sync: each rollout rank receives its weights (nothing more), learner
    # rank 0 sends each of its bf16 elements to each of the 8 replicas, its KV-head rows twice
    # (tp 8 over 4 KV heads: two ranks of a replica hold each); 50 GB/s per rank.
    sync = plan["weight_sync"]
    assert sync["received_per_rollout_rank_gib"] == pytest.approx(rollout["weights_gib"])
    kv_rows = sum(n for name, n in plan["learner_local_numel"].items()
                  if name.endswith(("attention.wk.weight", "attention.wv.weight")))
    rank0_sent = 8 * 2 * (total + kv_rows)
    assert rank0_sent / 2**30 <= sync["sent_per_learner_rank_gib"] <= 1.05 * rank0_sent / 2**30
    busiest = max(sync["sent_per_learner_rank_gib"], sync["received_per_rollout_rank_gib"])
    assert sync["sharded_s"] == pytest.approx(busiest * 2**30 / 50e9)
    assert sync["gather_s"] == pytest.approx(2 * 4 * plan["params"] / 50e9)
    assert "weight sync per policy version (sharded)" in proc.stdout


def test_dry_run_reports_what_does_not_fit(tmp_path):
    proc = subprocess.run(["./run_train.sh", "--config", "235b_moe_async.toml",
                           "--job.dry_run=true", f"--job.dump_folder={tmp_path}",
                           "--async_rl.rollout_tp=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 1 and " NO " in proc.stdout
