"""Weight sync benchmark: the gathering broadcast (async_rl.weight_sync = gather) against the
sharded sync, from 2 learner ranks (FSDP2) to one rollout replica of tp = 2, on 4 gloo ranks.

    python -m bench.weight_sync [--flavor bench_25M] [--dtype bfloat16] [--repeats 5] --json OUT

Per arm and sync: seconds from the start of the send to every rollout rank having applied it
(a host barrier on each side of it), bytes sent by each learner rank, bytes received by each
rollout rank. The arms alternate sync by sync; `speedup` is the median over repeats of gather
seconds / sharded seconds. 4 ranks share 2 cores here and gloo runs over loopback, so the
seconds say how the two compare on this machine, not what a network gives; the bytes are exact
anywhere."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
import torch.multiprocessing as mp

from bench.rl_step import report

LEARNERS, ROLLOUT_TP = 2, 2


def _rank_main(rank: int, world: int, port: int, flavor: str, dtype: str, repeats: int,
               out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from titan_spec import comm
    from titan_spec.config.schema import Parallelism
    from titan_spec.models import build_model, get_model_spec
    from titan_spec.models.init import canonical_name, materialize_and_init
    from titan_spec.parallel.parallel_dims import ParallelDims
    from titan_spec.parallel.plans import parallelize
    from titan_spec.parallel.rollout_layout import build_rollout_model
    from titan_spec.parallel.sharded_sync import ShardedWeightSync
    from titan_spec.parallel.weight_sync import WeightSync
    from titan_spec.runtime import exit_now

    dist.init_process_group("gloo")
    comm.configure(torch.device("cpu"))
    learner_dims = ParallelDims(1, LEARNERS, 1, 1, LEARNERS, first_rank=0)
    learner_dims.build_meshes("cpu")
    rollout_dims = ParallelDims(1, 1, ROLLOUT_TP, 1, ROLLOUT_TP, first_rank=LEARNERS)
    rollout_dims.build_meshes("cpu")
    spec = get_model_spec("qwen3")
    args = spec.args(flavor)
    rollout_ranks = list(range(LEARNERS, world))
    tp_rank = rollout_dims.mesh("tp").get_local_rank() if rank >= LEARNERS else 0
    kw = dict(rollout_tp=ROLLOUT_TP, rollout_tp_rank=tp_rank, n_kv_heads=args.n_kv_heads)
    syncs = {"gather": WeightSync(0, rollout_ranks, **kw),
             "sharded": ShardedWeightSync(list(range(LEARNERS)), rollout_ranks, **kw)}
    if rank < LEARNERS:
        model = build_model("qwen3", flavor, device="meta")
        parallelize("qwen3", model, learner_dims, Parallelism(dp_shard=LEARNERS), "cpu")
        materialize_and_init(model, torch.device("cpu"), seed=0)
    else:
        model = build_rollout_model(spec.builder, args, torch.device("cpu"), ROLLOUT_TP,
                                    rollout_dims.mesh("tp").get_group(),
                                    (getattr(torch, dtype),) * 2)
        full = build_model("qwen3", flavor, device="meta")
        shapes = {canonical_name(n): tuple(p.shape) for n, p in full.named_parameters()}
    syncs["sharded"].prepare(model)
    rows = []
    for repeat in range(repeats):
        order = ["gather", "sharded"] if repeat % 2 == 0 else ["sharded", "gather"]
        for arm in order:
            comm.barrier()
            start = time.perf_counter()
            if rank < LEARNERS:
                report = syncs[arm].send(model, repeat)
                syncs[arm].wait()
            else:
                report = syncs[arm].receive(model, shapes)
            comm.barrier()
            rows.append({"arm": arm, "repeat": repeat, "rank": rank, "bytes": report.bytes,
                         "seconds": time.perf_counter() - start})
    Path(out, f"rank{rank}.json").write_text(json.dumps(rows))
    comm.barrier()
    dist.destroy_process_group()
    exit_now(0)


def summarise(rows: list[dict], flavor: str, dtype: str) -> dict:
    result = {"flavor": flavor, "rollout_dtype": dtype, "learner_ranks": LEARNERS,
              "rollout_tp": ROLLOUT_TP, "arms": {}}
    for arm in ("gather", "sharded"):
        mine = [r for r in rows if r["arm"] == arm]
        result["arms"][arm] = {
            "seconds_median": median(r["seconds"] for r in mine if r["rank"] == 0),
            "bytes_sent_per_learner_rank": sorted({r["bytes"] for r in mine
                                                   if r["rank"] < LEARNERS}),
            "bytes_received_per_rollout_rank": sorted({r["bytes"] for r in mine
                                                       if r["rank"] >= LEARNERS})}
    ratios = []
    for repeat in sorted({r["repeat"] for r in rows}):
        seconds = {r["arm"]: r["seconds"] for r in rows if r["rank"] == 0
                   and r["repeat"] == repeat}
        ratios.append(seconds["gather"] / seconds["sharded"])
    result["speedup"] = median(ratios)
    gather, sharded = result["arms"]["gather"], result["arms"]["sharded"]
    result["received_bytes_ratio"] = (gather["bytes_received_per_rollout_rank"][0]
                                      / sharded["bytes_received_per_rollout_rank"][0])
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="bench.weight_sync")
    parser.add_argument("--flavor", default="bench_25M")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    world = LEARNERS + ROLLOUT_TP
    with tempfile.TemporaryDirectory() as out:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mp.start_processes(_rank_main, args=(world, port, args.flavor, args.dtype, args.repeats,
                                             out), nprocs=world, join=True,
                           start_method="spawn")
        rows = [row for rank in range(world)
                for row in json.loads(Path(out, f"rank{rank}.json").read_text())]
    result = summarise(rows, args.flavor, args.dtype)
    return report(result, args.json)


if __name__ == "__main__":
    main()
