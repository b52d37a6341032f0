"""Megatron-core `torch_dist` checkpoints (the folder Megatron keeps under iter_NNNNNNN/):
DCP files holding the layer-stacked keys of megatron_names.py, plus metadata.json (the backend)
and common.pt. A drafter goes along as `drafter.*` keys, which Megatron's loader leaves alone.
Memory: one layer-stacked tensor (Megatron's unit of storage) at a time."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from .dcp_io import description_or_flavor, load_key, save_entries
from .description import args_of, describe, write_description
from .hf_export import removed_on_failure, replace, temporary
from .megatron_names import TOP, fuse, layer_keys, split
from .store import Checkpoint, ConversionError, Entry, converted

BACKEND = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
           "common_backend": "torch", "common_backend_version": 1}


def is_megatron(path: Path) -> bool:
    try:
        metadata = json.loads((path / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return metadata.get("sharded_backend") == "torch_dist"


def _stacked(key: str, suffixes: list[str], model: dict[str, Entry], args) -> Entry:
    parts = [torch.empty(model[f"layers.0.{s}"].shape, device="meta") for s in suffixes]
    shape = (args.n_layers, *fuse(key, parts, args).shape)
    dtype = model[f"layers.0.{suffixes[0]}"].dtype

    def read() -> torch.Tensor:
        stacked = torch.empty(shape, dtype=dtype)  # filled layer by layer: no second copy
        for layer in range(args.n_layers):
            stacked[layer] = fuse(key, [model[f"layers.{layer}.{s}"].read() for s in suffixes],
                                  args)
        return stacked
    return Entry(shape, dtype, read)


def write_megatron(checkpoint: Checkpoint, out: Path, dtype=None) -> Path:
    args = checkpoint.args
    model = {name: converted(e, dtype) for name, e in checkpoint.group("model").items()}
    entries = {theirs: model[ours] for ours, theirs in TOP.items()
               if ours in model and not (args.tie_embeddings and ours == "output.weight")}
    for key, suffixes in layer_keys(args).items():
        entries[key] = _stacked(key, suffixes, model, args)
    entries.update({f"drafter.{name}": converted(e, dtype)
                    for name, e in checkpoint.group("drafter").items()})
    tmp = temporary(out)
    with removed_on_failure(tmp, out):
        save_entries(entries, tmp)
        (tmp / "metadata.json").write_text(json.dumps(BACKEND))
        torch.save({}, tmp / "common.pt")  # Megatron's non-sharded state: none to carry
        description = describe(checkpoint.model_name, args)
        description.update(drafter=checkpoint.drafter, layout="megatron")
        write_description(tmp, description)
    replace(tmp, out)
    return out


class _OneKeyCache:
    """Megatron keys are whole-model stacks: keep the last one read, as its layers are asked
    for one after another."""

    def __init__(self, path: Path, metadata):
        self.path, self.metadata, self.key, self.tensor = path, metadata, None, None

    def get(self, key: str) -> torch.Tensor:
        if key != self.key:
            info = self.metadata[key]
            self.key, self.tensor = None, None  # free the old one before reading the next
            self.tensor = load_key(self.path, key, tuple(info.size), info.properties.dtype)
            self.key = key
        return self.tensor


def read_megatron(path: Path, flavor: str | None = None) -> Checkpoint:
    described = description_or_flavor(path, flavor)
    args = args_of(described["model"], described["args"])
    metadata = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    cache = _OneKeyCache(path, metadata)
    checkpoint = Checkpoint("megatron", path, described["model"], args,
                            drafter=described.get("drafter"))
    for ours, theirs in TOP.items():
        if theirs in metadata:
            info = metadata[theirs]
            checkpoint.entries[f"model.{ours}"] = Entry(
                tuple(info.size), info.properties.dtype,
                lambda theirs=theirs: cache.get(theirs).clone())
    for key, suffixes in layer_keys(args).items():
        if key not in metadata:
            raise ConversionError(f"{path}: no '{key}'; not a Megatron GPT checkpoint of the "
                                  "shape its description / --flavor gives.")
        info = metadata[key]
        layer_shapes = [t.shape for t in split(key, torch.empty(tuple(info.size)[1:],
                                                                device="meta"), args)]
        for layer in range(args.n_layers):
            for index, suffix in enumerate(suffixes):
                checkpoint.entries[f"model.layers.{layer}.{suffix}"] = Entry(
                    tuple(layer_shapes[index]), info.properties.dtype,
                    lambda key=key, layer=layer, index=index:
                        split(key, cache.get(key)[layer], args)[index])
    for key, info in metadata.items():
        if key.startswith("drafter.") and isinstance(info, TensorStorageMetadata):
            checkpoint.entries[key] = Entry(
                tuple(info.size), info.properties.dtype,
                lambda key=key, info=info: load_key(path, key, tuple(info.size),
                                                    info.properties.dtype))
    return checkpoint
