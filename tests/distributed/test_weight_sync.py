"""Learner -> rollout weight sync: after a sync the rollout side holds exactly the learner's
full parameters (whole, or its tensor-parallel slice), for FSDP2 -> replicated, FSDP2 x TP ->
TP, EP -> replicated experts and EP -> tp = 4 (expert columns split, KV heads copied to 2 ranks
each), and its logits equal the full model's; a corrupted bucket is detected, not applied."""

import pytest
import torch

from tests.helpers import run_function

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]


def _dims(degrees: dict, world: int, first: int):
    from titan_spec.parallel.parallel_dims import ParallelDims

    dims = ParallelDims(degrees.get("dp_replicate", 1), degrees.get("dp_shard", -1),
                        degrees.get("tp", 1), degrees.get("ep", 1), world, first_rank=first)
    dims.build_meshes("cpu")
    return dims


def _sync(rank, world_size, flavor, learner_degrees, learner_world, rollout_tp, corrupt,
          dtype=torch.float32, sharded=False):
    from titan_spec.config.schema import Parallelism
    from titan_spec.models import build_model, get_model_spec
    from titan_spec.models.init import canonical_name, materialize_and_init
    from titan_spec.parallel.plans import parallelize
    from titan_spec.parallel.rollout_layout import build_rollout_model, rollout_slice
    from titan_spec.parallel.sharded_sync import ShardedWeightSync
    from titan_spec.parallel.weight_sync import WeightSync, WeightSyncError

    rollout_ranks = list(range(learner_world, world_size))
    learner_dims = _dims(learner_degrees, learner_world, 0)
    rollout_dims = _dims({"dp_shard": -1, "tp": rollout_tp}, len(rollout_ranks), learner_world)
    spec = get_model_spec("qwen3")
    full = build_model("qwen3", flavor, seed=7)  # what the learner holds, whole
    tp_rank = rollout_dims.mesh("tp").get_local_rank() if rank >= learner_world else 0
    sync_cls = ShardedWeightSync if sharded else WeightSync
    if corrupt:
        class Corrupting(sync_cls):
            def on_arrival(self, bucket, index):
                if index == 1:
                    bucket = bucket.clone()
                    bucket.view(torch.uint8)[13] ^= 1  # one bit of one element
                return bucket
        sync_cls = Corrupting
    n_kv_heads = spec.args(flavor).n_kv_heads
    sync = sync_cls(*([list(range(learner_world))] if sharded else [0]), rollout_ranks,
                    bucket_bytes=64 << 10, rollout_tp=rollout_tp, rollout_tp_rank=tp_rank,
                    n_kv_heads=n_kv_heads)
    if rank < learner_world:
        model = build_model("qwen3", flavor, device="meta")
        parallelize("qwen3", model, learner_dims, Parallelism(**learner_degrees), "cpu")
        materialize_and_init(model, torch.device("cpu"), seed=7)
        if sharded:
            try:
                sync.prepare(model)
            except ValueError as err:
                return {"refused": str(err)}
            _forbid_gathers()
        report = sync.send(model, version=3)
        sync.wait()
        return {"sent": report.bytes, "buckets": report.buckets}
    group = rollout_dims.mesh("tp").get_group() if rollout_tp > 1 else None
    rollout = build_rollout_model(spec.builder, full.args, torch.device("cpu"), rollout_tp, group,
                                  (dtype, dtype))
    if sharded:
        try:
            sync.prepare(rollout)
        except ValueError as err:
            return {"refused": str(err)}
    with torch.no_grad():  # to_empty leaves garbage (NaN != NaN): start from a known value
        for param in rollout.parameters():
            param.fill_(-7.0)
    before = {canonical_name(n): p.clone() for n, p in rollout.named_parameters()}
    shapes = {canonical_name(n): tuple(p.shape) for n, p in full.named_parameters()}
    try:
        report = sync.receive(rollout, shapes)
    except WeightSyncError as err:
        return {"error": str(err), "second_bucket_untouched": _untouched(rollout, before)}
    expected = full.state_dict()
    mismatched, slice_bytes = [], 0
    for name, param in rollout.named_parameters():
        name = canonical_name(name)
        want = rollout_slice(name, expected[name], rollout_tp, tp_rank, n_kv_heads).to(dtype)
        slice_bytes += want.numel() * want.element_size()
        if not torch.equal(param, want):
            mismatched.append(name)
    tokens = torch.randint(3, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    full.to(dtype)
    full.init_buffers("cpu")  # RoPE tables stay float32, as in the rollout model
    with torch.no_grad():
        logit_gap = (rollout(tokens).float() - full(tokens).float()).abs().max().item()
    return {"mismatched": mismatched, "version": report.version, "bytes": report.bytes,
            "slice_bytes": slice_bytes, "logit_gap": logit_gap,
            "dtypes": sorted({str(p.dtype) for p in rollout.parameters()})}


def _forbid_gathers():
    """From here on, a learner rank that materialises a full parameter fails the test."""
    from torch.distributed.tensor import DTensor

    def refuse(*args, **kwargs):
        raise AssertionError("the sharded sync gathered a full parameter")

    DTensor.full_tensor = refuse
    DTensor.redistribute = refuse


def _untouched(rollout, before):
    from titan_spec.models.init import canonical_name

    return [n for n, p in rollout.named_parameters() if torch.equal(p, before[canonical_name(n)])]


def _run_on_last_rollout_rank(rank, world_size, *args):
    result = _sync(rank, world_size, *args)
    import torch.distributed as dist

    # rank 0 reports: gather the last rank's view of the sync to it
    gathered = [None] * world_size
    dist.all_gather_object(gathered, result)
    return gathered


@pytest.mark.parametrize("flavor, learner, learner_world, world, rollout_tp", [
    ("debug", {"dp_shard": 2}, 2, 4, 1),
    ("debug", {"dp_shard": 2, "tp": 2}, 4, 6, 2),
    ("debug_moe", {"dp_shard": 2, "ep": 2}, 2, 4, 1),
    ("debug_moe", {"dp_shard": 2, "ep": 2}, 2, 6, 4),
], ids=["fsdp2->replicated", "fsdp2xtp->tp", "ep->replicated", "ep->tp4"])
def test_rollout_holds_the_learner_weights(flavor, learner, learner_world, world, rollout_tp,
                                          tmp_path):
    results = run_function(world, _run_on_last_rollout_rank, tmp_path, flavor, learner,
                           learner_world, rollout_tp, False)
    assert results[0]["buckets"] > 1  # bucketed, not one message
    for result in results[learner_world:]:
        assert result["mismatched"] == []
        assert result["version"] == 3 and result["bytes"] == results[0]["sent"]
        assert result["logit_gap"] < 1e-5


def test_a_bf16_rollout_model_holds_the_learner_weights_in_bf16(tmp_path):
    """The rollout side builds its weights in its dtype (parallelism.param_dtype); the fp32
    buckets are cast on arrival, to exactly the learner's weights rounded to bf16."""
    results = run_function(4, _run_on_last_rollout_rank, tmp_path, "debug", {"dp_shard": 2}, 2,
                           1, False, torch.bfloat16)
    for result in results[2:]:
        assert result["mismatched"] == [] and result["dtypes"] == ["torch.bfloat16"]
        assert result["logit_gap"] == 0.0  # the same bf16 forward as the cast full model


def test_corrupted_bucket_is_detected(tmp_path):
    results = run_function(4, _run_on_last_rollout_rank, tmp_path, "debug", {"dp_shard": 2}, 2,
                           1, True)
    for result in results[2:]:
        assert "bucket 1 (" in result["error"] and "checksum" in result["error"]
        assert result["second_bucket_untouched"]  # the damaged bucket was not applied


@pytest.mark.parametrize("kind", ["host crc32", "device sum"])
def test_checksum_catches_changed_swapped_and_zeroed_elements(kind):
    """Both kinds (the device one runs on any device; CUDA buckets use it, tests/gpu too),
    over float32 buckets and odd-sized byte buckets (the sharded sync's)."""
    from titan_spec.parallel.weight_sync import checksum, device_checksum

    function = checksum if kind == "host crc32" else \
        (lambda flat: device_checksum(flat, chunk_words=64))  # several chunks
    for bucket in (torch.randn(1000, generator=torch.Generator().manual_seed(0)),
                   torch.randint(0, 256, (1001,), dtype=torch.uint8,
                                 generator=torch.Generator().manual_seed(1))):
        reference = function(bucket)
        changed, swapped, zeroed = bucket.clone(), bucket.clone(), bucket.clone()
        changed.view(torch.uint8)[7] ^= 1  # one bit of one element
        swapped[[3, 900]] = swapped[[900, 3]]
        assert not torch.equal(swapped, bucket)
        zeroed[500:] = 0
        assert torch.equal(function(bucket.clone()), reference)
        for damaged in (changed, swapped, zeroed):
            assert not torch.equal(function(damaged), reference)


def _sync_eagle3_head(rank, world_size):
    """The drafter sync carries persistent buffers: an EAGLE-3 head's vocabulary map."""
    import torch.distributed as dist

    from titan_spec.models import build_model
    from titan_spec.models.eagle3 import build_eagle3_head, set_draft_vocab
    from titan_spec.parallel.weight_sync import WeightSync, synced_tensors

    args = build_model("qwen3", "debug", device="meta").args
    head = torch.nn.ModuleList([build_eagle3_head(args, seed=rank, draft_vocab_size=20)])
    if rank == 0:
        set_draft_vocab(head[0], torch.arange(0, 60, 3))  # chosen by the learner's warm-up
    sync = WeightSync(0, [1])
    if rank == 0:
        sync.send(head, version=1)
        sync.wait()
    else:
        sync.receive(head, {n: tuple(t.shape) for n, t in synced_tensors(head).items()})
    state = {name: tensor.clone() for name, tensor in head.state_dict().items()}
    gathered = [None, None]
    dist.all_gather_object(gathered, state)
    return gathered


def test_drafter_sync_carries_the_eagle3_vocabulary_map(tmp_path):
    learner, rollout = run_function(2, _sync_eagle3_head, tmp_path)
    assert set(learner) == set(rollout) and {"0.d2t", "0.t2d"} <= set(rollout)
    for name, tensor in learner.items():
        assert torch.equal(tensor, rollout[name]), name
    assert rollout["0.t2d"].sum() == 20


@pytest.mark.parametrize("flavor, learner, world, rollout_tp, dtype", [
    ("debug", {"dp_shard": 2}, 4, 2, torch.float32),
    ("debug", {"dp_shard": 2}, 4, 2, torch.bfloat16),
    ("debug_moe", {"dp_shard": 2, "ep": 2}, 6, 4, torch.float32),
    ("debug", {"dp_shard": 2, "tp": 2}, 6, 2, torch.float32),
], ids=["fsdp2->tp2", "fsdp2->tp2-bf16", "ep->tp4", "fsdp2xtp->tp2"])
def test_sharded_sync_sends_each_rollout_rank_its_slice_only(flavor, learner, world, rollout_tp,
                                                             dtype, tmp_path):
    """async_rl.weight_sync = sharded: each learner rank sends what it holds (gathering a
    parameter fails the test), each rollout rank receives its slice's bytes in its own dtype,
    not the model, and holds the learner's weights bit for bit (cast)."""
    learner_world = world - 2 if rollout_tp == 2 else 2
    results = run_function(world, _run_on_last_rollout_rank, tmp_path, flavor, learner,
                           learner_world, rollout_tp, False, dtype, True)
    learners, rollouts = results[:learner_world], results[learner_world:]
    for result in rollouts:
        assert result["mismatched"] == [] and result["version"] == 3
        assert result["bytes"] == result["slice_bytes"]
        assert result["dtypes"] == [str(dtype)]
    assert all(result["sent"] > 0 for result in learners)  # many senders
    assert sum(r["sent"] for r in learners) == sum(r["bytes"] for r in rollouts)
    full_model_bytes = rollouts[0]["slice_bytes"] * rollout_tp
    assert all(r["bytes"] < full_model_bytes for r in rollouts)


def test_sharded_sync_detects_a_corrupted_bucket(tmp_path):
    results = run_function(4, _run_on_last_rollout_rank, tmp_path, "debug", {"dp_shard": 2}, 2,
                           1, True, torch.float32, True)
    for result in results[2:]:
        assert "bucket 1 from rank" in result["error"] and "checksum" in result["error"]

