"""Convert checkpoints between formats, tensor by tensor, or describe one.

    python -m tools.convert_checkpoint SRC DST --to FMT [--from FMT] [--dtype bfloat16]
                                       [--optimizer] [--flavor 8B] [--overwrite]
    python -m tools.convert_checkpoint inspect SRC [--from FMT] [--flavor 8B] [--tensors]

Formats: hf (config.json + safetensors; a drafter in SRC-drafter/), dcp (our step folders, on
any number of ranks; --optimizer keeps the optimizer state), torchtitan (torchtitan's DCP for
Qwen3, its names), megatron (Megatron-core torch_dist: layer-stacked, fused QKV and gate/up;
the folder Megatron keeps under iter_NNNNNNN/), tensorstore (zarr3 arrays in an OCDBT store).
--from is detected when left out. The drafter goes along in every format. A conversion writes
to a hidden temporary folder renamed to DST at the end: a failure leaves no DST behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from titan_spec.formats.store import FORMATS, open_checkpoint, write_checkpoint

DTYPES = ("float32", "bfloat16", "float16")


def inspect(src: Path, fmt: str | None, flavor: str | None, tensors: bool) -> dict:
    checkpoint = open_checkpoint(src, fmt, flavor)
    groups: dict[str, dict] = {}
    for key, entry in checkpoint.entries.items():
        group = key.split(".", 1)[0] if key.startswith(("model.", "drafter.")) else "optimizer"
        totals = groups.setdefault(group, {"tensors": 0, "bytes": 0, "dtypes": set()})
        totals["tensors"] += 1
        totals["bytes"] += entry.nbytes
        totals["dtypes"].add(str(entry.dtype).removeprefix("torch."))
    report = {
        "path": str(src), "format": checkpoint.format, "model": checkpoint.model_name,
        "params": checkpoint.args.num_params(), "moe": checkpoint.args.is_moe,
        "drafter": checkpoint.drafter["kind"] if checkpoint.drafter else None,
        "groups": {name: dict(g, dtypes=sorted(g["dtypes"])) for name, g in groups.items()},
    }
    if tensors:
        report["tensors"] = {key: {"shape": list(e.shape),
                                   "dtype": str(e.dtype).removeprefix("torch."),
                                   "bytes": e.nbytes}
                             for key, e in checkpoint.entries.items()}
    return report


def convert(src: Path, dst: Path, to: str, fmt: str | None, dtype: str | None,
            optimizer: bool, flavor: str | None, overwrite: bool) -> dict:
    import torch

    if dst.exists() and not overwrite:
        raise ValueError(f"{dst} exists; pass --overwrite to replace it (it is replaced only "
                         "once the new one is complete).")
    checkpoint = open_checkpoint(src, fmt, flavor)
    out = write_checkpoint(checkpoint, dst, to, getattr(torch, dtype) if dtype else None,
                           optimizer)
    return {"from": checkpoint.format, "to": to, "out": str(out),
            "drafter": checkpoint.drafter["kind"] if checkpoint.drafter else None}


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m tools.convert_checkpoint{command}",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    if not command:
        parser.add_argument("dst", type=Path)
        parser.add_argument("--to", required=True, choices=FORMATS)
        parser.add_argument("--dtype", choices=DTYPES, help="of the weights (default: as is)")
        parser.add_argument("--optimizer", action="store_true",
                            help="keep the optimizer state (dcp to dcp)")
        parser.add_argument("--overwrite", action="store_true")
    else:
        parser.add_argument("--tensors", action="store_true", help="list every tensor")
    parser.add_argument("--from", dest="fmt", choices=FORMATS, help="default: detected")
    parser.add_argument("--flavor", help="the model's shape, for a DCP without model.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = " inspect" if argv[:1] == ["inspect"] else ""
    args = _parser(command).parse_args(argv[1:] if command else argv)
    try:
        if command:
            result = inspect(args.src, args.fmt, args.flavor, args.tensors)
        else:
            result = convert(args.src, args.dst, args.to, args.fmt, args.dtype, args.optimizer,
                             args.flavor, args.overwrite)
    except (ValueError, OSError) as err:  # ConversionError, WeightsError, CheckpointError
        print(f"convert_checkpoint: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
