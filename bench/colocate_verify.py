"""Time one verify step (k+1 positions at a given decode batch, KV cache) of an FSDP2-sharded
learner three ways, on N gloo ranks: through the FSDP2 module (parameters re-gathered every
forward), through the colocated hook-free view (parallel/verifier.py), and through a plain
module holding the same weights. The view should cost what the plain module costs."""

from __future__ import annotations

import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from titan_spec.runtime import close_distributed, exit_now


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_steps(model, batch: int, k: int, steps: int, context: int = 32) -> float:
    from titan_spec.rollout.kv_cache import KVCache

    cache = KVCache.for_model(model, batch, context + k + 1)
    tokens = torch.randint(3, 50, (batch, k + 1))
    positions = torch.arange(context, context + k + 1).expand(batch, k + 1)
    slots = torch.arange(batch)
    with torch.no_grad():
        model(torch.randint(3, 50, (batch, context)), kv_cache=cache.view(slots, context))
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            model(tokens, positions, kv_cache=cache.view(slots, context + k + 1))
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]  # median


def _worker(rank, world, port, flavor, batch, k, steps, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from titan_spec.config.schema import Parallelism
    from titan_spec.models import build_model, get_model_spec
    from titan_spec.models.init import materialize_and_init
    from titan_spec.parallel.parallel_dims import ParallelDims
    from titan_spec.parallel.plans import parallelize
    from titan_spec.parallel.verifier import colocated_verifier

    cfg = Parallelism(dp_shard=world)
    dims = ParallelDims.from_config(cfg, world)
    dims.build_meshes("cpu")
    spec = get_model_spec("qwen3")
    learner = build_model("qwen3", flavor, device="meta")
    parallelize("qwen3", learner, dims, cfg, "cpu")
    materialize_and_init(learner, torch.device("cpu"), seed=0)
    result = {"fsdp_module_ms": 1e3 * _time_steps(learner, batch, k, max(3, steps // 4))}
    with colocated_verifier(learner, dims, spec.builder) as view:
        result["colocated_view_ms"] = 1e3 * _time_steps(view, batch, k, steps)
    plain = build_model("qwen3", flavor, seed=0).eval()
    result["plain_module_ms"] = 1e3 * _time_steps(plain, batch, k, steps)
    if rank == 0:
        torch.save(result, out)
    close_distributed()
    exit_now(0)


def measure_verify_step(flavor: str, world: int, batch: int, k: int, steps: int = 40) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "verify.pt")
        mp.start_processes(_worker, args=(world, _port(), flavor, batch, k, steps, out),
                           nprocs=world, join=True, start_method="spawn")
        result = torch.load(out, weights_only=True)
    result["view_vs_plain"] = result["colocated_view_ms"] / result["plain_module_ms"]
    result["fsdp_module_vs_plain"] = result["fsdp_module_ms"] / result["plain_module_ms"]
    result.update(flavor=flavor, ranks=world, batch=batch, positions=k + 1)
    return result


if __name__ == "__main__":
    print(measure_verify_step("bench_25M", 2, batch=2, k=4))
