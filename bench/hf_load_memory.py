"""Peak memory of loading a sharded Hugging Face checkpoint into FSDP2 shards.

Writes (once, into --cache) an HF folder of a model whose fp32 weights are `--world` times one
rank's share, then, side by side in one run:
- sliced: `--world` gloo ranks each build the FSDP2-sharded model and fill it with
  formats/hf.py's slice reads (what a run with checkpoint.initial_load_format=hf does);
- whole: one process reads every tensor of the same folder (what loading a full state dict and
  then sharding it costs).
Each arm's figure is (peak RSS - RSS before loading) / one rank's share of the weights.
Then tools.convert_checkpoint's conversions of the same folder (to dcp, tensorstore, megatron,
torchtitan, and dcp -> hf), each in its own process: peak RSS over the largest tensor.

    python -m bench.hf_load_memory --json out.json [--cache DIR] [--world 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

SHAPE = dict(dim=1024, n_layers=8, n_heads=8, n_kv_heads=8, head_dim=128, hidden_dim=3072,
             vocab_size=32768, max_seq_len=512)


LARGEST = SHAPE["vocab_size"] * SHAPE["dim"] * 4  # the embedding (and the head), fp32


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _start_measuring() -> int:
    """Reset the peak-RSS mark (VmHWM) to the current RSS; -> that RSS. (getrusage's maxrss
    would not do: Linux keeps it across exec, so a spawned child starts with its parent's.)"""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def _peak_bytes() -> int:
    return _status_bytes("VmHWM")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_checkpoint(folder: Path) -> Path:
    from titan_spec.formats.hf_export import export_hf
    from titan_spec.models import build_model

    if (folder / "config.json").is_file():
        return folder
    model = build_model("qwen3", "debug", **SHAPE)
    export_hf(model, folder, "qwen3", "float32", writer=True, max_shard_bytes=64 << 20)
    return folder


def _sliced_rank(rank: int, world: int, port: int, folder: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from titan_spec.config import load_config
    from titan_spec.formats.hf import hf_model_args, load_into_shards
    from titan_spec.models import build_model_from_args
    from titan_spec.models.init import materialize
    from titan_spec.parallel.parallel_dims import ParallelDims
    from titan_spec.parallel.plans import parallelize
    from titan_spec.runtime import exit_now

    dist.init_process_group("gloo")
    cfg = load_config("debug_model.toml", [f"--parallelism.dp_shard={world}"])
    dims = ParallelDims.from_config(cfg.parallelism, world)
    dims.build_meshes("cpu")
    model = build_model_from_args("qwen3", hf_model_args("qwen3", folder))
    parallelize("qwen3", model, dims, cfg.parallelism, "cpu")
    before = _start_measuring()
    materialize(model, torch.device("cpu"))
    load_into_shards(model, folder, "qwen3")
    share = sum(p.to_local().numel() * 4 if isinstance(p, DTensor) else p.numel() * 4
                for p in model.parameters())
    result = {"rank": rank, "share_bytes": share, "peak_delta_bytes": _peak_bytes() - before}
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    dist.barrier()
    exit_now(0)


def _whole_read(folder: str, out: str) -> None:
    from safetensors import safe_open

    before = _start_measuring()
    tensors = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key).clone() for key in handle.keys()})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    Path(out).write_text(json.dumps({"peak_delta_bytes": _peak_bytes() - before,
                                     "model_bytes": total}))


def _convert(folder: str, fmt: str, dst: str, out: str) -> None:
    from titan_spec.formats.store import open_checkpoint, write_checkpoint

    before = _start_measuring()
    write_checkpoint(open_checkpoint(folder), dst, fmt)
    Path(out).write_text(json.dumps({"peak_delta_bytes": _peak_bytes() - before}))


def _in_child(target, *args) -> dict:
    process = mp.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join()
    return json.loads(Path(args[-1]).read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                        "titan_spec_bench", "hf_load_memory"))
    parser.add_argument("--world", type=int, default=4)
    args = parser.parse_args()
    folder = write_checkpoint(Path(args.cache) / "model")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank")
        mp.start_processes(_sliced_rank, args=(args.world, _port(), str(folder), out),
                           nprocs=args.world, join=True, start_method="spawn")
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(args.world)]
        whole = _in_child(_whole_read, str(folder), os.path.join(tmp, "whole"))
        conversions = {}
        for fmt in ("dcp", "tensorstore", "torchtitan", "megatron"):  # each from the HF folder
            conversions[fmt] = _in_child(_convert, str(folder), fmt, os.path.join(tmp, fmt),
                                         os.path.join(tmp, f"{fmt}.json"))
        conversions["hf"] = _in_child(_convert, os.path.join(tmp, "dcp"), "hf",
                                      os.path.join(tmp, "hf"), os.path.join(tmp, "hf.json"))
    share = max(r["share_bytes"] for r in ranks)
    result = {
        "world": args.world, "model_mib": whole["model_bytes"] / 2**20,
        "share_mib": share / 2**20,
        "sliced_peak_over_share": max(r["peak_delta_bytes"] for r in ranks) / share,
        "whole_read_peak_over_share": whole["peak_delta_bytes"] / share,
        "per_rank_peak_mib": [r["peak_delta_bytes"] / 2**20 for r in ranks],
        # tools.convert_checkpoint, one process: peak RSS over the largest tensor's bytes
        "largest_tensor_mib": LARGEST / 2**20,
        "convert_peak_over_largest_tensor": {
            fmt: c["peak_delta_bytes"] / LARGEST for fmt, c in conversions.items()},
        "convert_peak_over_model": {
            fmt: c["peak_delta_bytes"] / whole["model_bytes"] for fmt, c in conversions.items()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
