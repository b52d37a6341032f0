"""Hugging Face folders for the conversion tool. The drafter lives next to the model, as the
run's export writes it: `<folder>-drafter/` (an HF model for a draft model, or heads in
drafter.safetensors + drafter.json)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from titan_spec.models import build_model_from_args, get_model_spec

from .description import args_of
from .eagle3_hf import is_eagle3_folder
from .hf import check_weights, global_shapes, hf_model_args, is_hf_folder
from .hf_export import (
    HFWeightsWriter,
    copy_tokenizer_files,
    removed_on_failure,
    replace,
    temporary,
    write_heads_into,
    write_metadata,
)
from .safetensors_folder import SafetensorsFolder
from .safetensors_stream import TORCH_DTYPES
from .store import Checkpoint, ConversionError, Entry

MODEL_NAME = "qwen3"  # the one family with an HF adapter


_EAGLE3_NOT_CONVERTED = (
    "{}: this tool does not convert an EAGLE-3 drafter to or from Hugging Face folders yet; a "
    "run exports it in the public layout itself (checkpoint.last_save_in_hf), "
    "drafter.init_from reads that layout, and the other formats carry its tensors as they are.")


def drafter_folder(folder: Path) -> Path:
    return folder.with_name(folder.name + "-drafter")


def _model_entries(folder: Path, prefix: str) -> tuple[object, dict[str, Entry]]:
    spec = get_model_spec(MODEL_NAME)
    args = hf_model_args(MODEL_NAME, folder)
    shapes = global_shapes(build_model_from_args(MODEL_NAME, args))
    weights = SafetensorsFolder(folder)
    check_weights(weights, args, spec.hf, shapes)
    entries = {}
    for name, source in spec.hf.sources(args).items():
        dtype = TORCH_DTYPES[weights.tensors[source.hf_keys[0]][2]]
        entries[f"{prefix}.{name}"] = Entry(
            shapes[name], dtype, lambda source=source: source.assemble(weights.read))
    return args, entries


def _head_entries(folder: Path) -> tuple[dict, dict[str, Entry]]:
    from safetensors import safe_open

    described = json.loads((folder / "drafter.json").read_text())
    file = str(folder / "drafter.safetensors")
    entries = {}
    with safe_open(file, framework="pt") as handle:
        for key in handle.keys():
            piece = handle.get_slice(key)
            entries[f"drafter.{key}"] = Entry(
                tuple(piece.get_shape()), TORCH_DTYPES[piece.get_dtype()],
                lambda key=key: _read_one(file, key))
    return {"kind": described["kind"], "args": None}, entries


def _read_one(file: str, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as handle:
        return handle.get_tensor(key)


def read_hf(folder: Path) -> Checkpoint:
    args, entries = _model_entries(folder, "model")
    checkpoint = Checkpoint("hf", folder, MODEL_NAME, args, entries=entries,
                            source_folder=folder)
    side = drafter_folder(folder)
    if is_eagle3_folder(side):
        raise ConversionError(_EAGLE3_NOT_CONVERTED.format(side))
    if (side / "drafter.json").is_file():
        checkpoint.drafter, heads = _head_entries(side)
        checkpoint.entries.update(heads)
    elif is_hf_folder(side):
        draft_args, draft = _model_entries(side, "drafter")
        checkpoint.drafter = {"kind": "draft_model", "args": asdict(draft_args)}
        checkpoint.entries.update(draft)
    return checkpoint


def _write_model(out: Path, args, entries: dict[str, Entry], dtype, config_folder,
                 tokenizer_folder, max_shard_bytes: int) -> None:
    adapter = get_model_spec(MODEL_NAME).hf
    needed = set(adapter.sources(args)) - ({"output.weight"} if args.tie_embeddings else set())
    missing = sorted(needed - set(entries))
    if missing:
        raise ConversionError(f"the source has no '{missing[0]}' ({len(missing)} model tensors "
                              "missing): it cannot be written as a Hugging Face model.")
    dtype = dtype or next(iter(entries.values())).dtype
    writer = HFWeightsWriter(out, {name: e.shape for name, e in entries.items()}, args,
                             adapter, dtype, max_shard_bytes)
    for name, entry in entries.items():
        writer.write(name, entry.read())
    writer.close()
    write_metadata(out, args, adapter, str(dtype).removeprefix("torch."), config_folder)
    copy_tokenizer_files(tokenizer_folder, out)


def write_hf(checkpoint: Checkpoint, out: Path, dtype=None,
             max_shard_bytes: int = 2 << 30) -> Path:
    """The model to `out`, the drafter (if any) to `<out>-drafter`; each written to a hidden
    temporary folder, the drafter's renamed first so a complete model means a complete pair."""
    side, tmp_side = drafter_folder(out), None
    tmp = temporary(out)
    with removed_on_failure(tmp, out):
        _write_model(tmp, checkpoint.args, checkpoint.group("model"), dtype,
                     checkpoint.source_folder, checkpoint.source_folder, max_shard_bytes)
        if checkpoint.drafter is not None:
            tmp_side = temporary(side)
            with removed_on_failure(tmp_side, side):
                _write_drafter(checkpoint, tmp_side, dtype, max_shard_bytes)
    if tmp_side is not None:
        replace(tmp_side, side)
    replace(tmp, out)
    return out


def _write_drafter(checkpoint: Checkpoint, out: Path, dtype, max_shard_bytes: int) -> None:
    drafter, entries = checkpoint.drafter, checkpoint.group("drafter")
    if drafter["kind"] == "draft_model":
        args = args_of(checkpoint.model_name, drafter["args"])
        _write_model(out, args, entries, dtype, None, checkpoint.source_folder,
                     max_shard_bytes)
        return
    if drafter["kind"] == "eagle3":
        raise ConversionError(_EAGLE3_NOT_CONVERTED.format(checkpoint.path))
    state = {name: entry.read() for name, entry in entries.items()}  # heads are small
    dtype_name = str(dtype or next(iter(state.values())).dtype).removeprefix("torch.")
    write_heads_into(out, state, drafter["kind"], dtype_name)
