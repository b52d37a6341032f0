"""DCP folders for the conversion tool: ours (`model.*`, `drafter.*`, optimizer keys; saved on
any number of ranks, read here in one process) and torchtitan's (its parameter names at the top
level, torchtitan_names.py). Reads go one key at a time through dcp.load; writes go through
dcp.save with a planner that reads each tensor only when DCP's writer asks for it, so memory is
one tensor either way."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from .description import args_of, describe, read_description, write_description
from .hf_export import removed_on_failure, replace, temporary
from .store import Checkpoint, ConversionError, Entry, converted, weights
from .torchtitan_names import from_torchtitan, to_torchtitan

# Running DCP in one process without a process group is what conversion wants; DCP warns.
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def load_key(path: Path, key: str, shape, dtype) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=dtype)
    dcp.load({key: tensor}, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
    return tensor


def description_or_flavor(path: Path, flavor: str | None) -> dict:
    described = read_description(path)
    if described is not None:
        return described
    if flavor:
        from titan_spec.models import get_model_spec

        return describe("qwen3", get_model_spec("qwen3").args(flavor))
    raise ConversionError(f"{path} has no model.json (checkpoints saved before it existed, or "
                          "by torchtitan): name the model's shape with --flavor (e.g. 8B).")


def read_dcp(path: Path, fmt: str, flavor: str | None = None) -> Checkpoint:
    if (path / "manifest.json").is_file():
        from titan_spec.components.checkpoint import verify

        verify(path)
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as err:
        raise ConversionError(f"{path}: cannot read DCP metadata ({err}).") from None
    described = description_or_flavor(path, flavor)
    checkpoint = Checkpoint(fmt, path, described["model"],
                            args_of(described["model"], described["args"]),
                            drafter=described.get("drafter"))
    for key, info in metadata.state_dict_metadata.items():
        if not isinstance(info, TensorStorageMetadata):
            checkpoint.objects[key] = None
            continue
        read = (lambda key=key, info=info:
                load_key(path, key, tuple(info.size), info.properties.dtype))
        entry = Entry(tuple(info.size), info.properties.dtype, read)
        if fmt == "torchtitan" and not key.startswith("drafter."):
            mapped = from_torchtitan(key, entry)
            if mapped is not None:
                checkpoint.entries["model." + mapped[0]] = mapped[1]
        else:
            checkpoint.entries[key] = entry
    return checkpoint


def _objects(checkpoint: Checkpoint) -> dict:
    """The non-tensor items of our DCP (optimizer param groups), read once (they are small)."""
    objects = {key: {} for key in checkpoint.objects}
    if objects:
        dcp.load(objects, storage_reader=dcp.FileSystemReader(str(checkpoint.path)),
                 no_dist=True)
    return objects


class _ReadWhenWritten(DefaultSavePlanner):
    """Plans from meta tensors; each tensor is read from its Entry when DCP writes it."""

    def __init__(self, entries: dict[str, Entry]):
        super().__init__()
        self.entries = entries

    def resolve_data(self, write_item):
        key = write_item.index.fqn
        if key in self.entries:
            return self.entries[key].read()
        return super().resolve_data(write_item)


def save_entries(entries: dict[str, Entry], folder: Path, objects: dict | None = None) -> None:
    """One DCP checkpoint of these entries (each read when DCP writes it) plus small objects."""
    state = {key: torch.empty(e.shape, dtype=e.dtype, device="meta")
             for key, e in entries.items()}
    state.update(objects or {})
    # One file per tensor: DCP's writer keeps every tensor of a file alive until the file is
    # done (torch 2.13, filesystem.py), so one file per rank would hold the whole model.
    writer = dcp.FileSystemWriter(str(folder), single_file_per_rank=False, thread_count=1)
    try:
        dcp.save(state, storage_writer=writer, planner=_ReadWhenWritten(entries), no_dist=True)
    except CheckpointException as err:  # DCP wraps the cause in a per-rank report
        cause = [line for line in str(err).splitlines() if line.strip()][-1]
        raise ConversionError(f"writing {folder} failed: {cause.strip()}") from err


def write_dcp(checkpoint: Checkpoint, out: Path, fmt: str, dtype=None,
              optimizer: bool = False) -> Path:
    entries = {key: (converted(e, dtype) if key.startswith(("model.", "drafter.")) else e)
               for key, e in weights(checkpoint, optimizer).items()}
    if fmt == "torchtitan":
        entries = {(to_torchtitan(key[6:], e)[0] if key.startswith("model.") else key):
                   (to_torchtitan(key[6:], e)[1] if key.startswith("model.") else e)
                   for key, e in entries.items()}
    tmp = temporary(out)
    with removed_on_failure(tmp, out):
        save_entries(entries, tmp, _objects(checkpoint) if optimizer else {})
        description = describe(checkpoint.model_name, checkpoint.args)
        description.update(drafter=checkpoint.drafter, layout=fmt)
        write_description(tmp, description)
        if optimizer and (checkpoint.path / "train_state.json").is_file():
            shutil.copy2(checkpoint.path / "train_state.json", tmp / "train_state.json")
        from titan_spec.components.checkpoint import write_manifest

        write_manifest(tmp)
    replace(tmp, out)
    return out

