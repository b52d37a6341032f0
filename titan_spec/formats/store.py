"""The conversion tool's common currency: a checkpoint as named tensors in titan-spec's names
(`model.<param>`, `drafter.<param>`, and for our DCP the optimizer's own keys), each read only
when asked for, so a conversion holds one tensor at a time. Readers and writers per format live
in hf_io.py, dcp_io.py (ours and torchtitan's), megatron_io.py and tensorstore_io.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

FORMATS = ("hf", "dcp", "torchtitan", "megatron", "tensorstore")


class ConversionError(ValueError):
    """A source that cannot be read as the format named, or a destination that cannot be
    written."""


@dataclass
class Entry:
    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class Checkpoint:
    format: str
    path: Path
    model_name: str
    args: object
    drafter: dict | None = None  # {"kind": ..., "args": {...} for a draft model}
    entries: dict[str, Entry] = field(default_factory=dict)
    objects: dict[str, object] = field(default_factory=dict)  # non-tensor DCP items
    source_folder: Path | None = None  # an HF folder whose config / tokenizer files to keep

    def group(self, prefix: str) -> dict[str, Entry]:
        """Entries under `prefix.` with the prefix taken off (model, drafter)."""
        cut = len(prefix) + 1
        return {key[cut:]: entry for key, entry in self.entries.items()
                if key.startswith(prefix + ".")}

    @property
    def has_optimizer(self) -> bool:
        return any(not key.startswith(("model.", "drafter.")) for key in self.entries)


def detect_format(path: Path) -> str:
    """The format of a folder, from what it holds."""
    from .description import read_description

    if not path.is_dir():
        raise ConversionError(f"{path} is not a folder.")
    if (path / "config.json").is_file():
        return "hf"
    if (path / "titan_spec_tensorstore.json").is_file():
        return "tensorstore"
    from .megatron_io import is_megatron

    if is_megatron(path):
        return "megatron"
    if (path / ".metadata").is_file():
        description = read_description(path)
        if description is not None and description.get("layout") == "torchtitan":
            return "torchtitan"
        import torch.distributed.checkpoint as dcp

        keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        return "dcp" if any(key.startswith("model.") for key in keys) else "torchtitan"
    raise ConversionError(f"{path}: no config.json (hf), .metadata (dcp / torchtitan) or "
                          "titan_spec_tensorstore.json (tensorstore); not a checkpoint.")


def open_checkpoint(path, fmt: str | None = None, flavor: str | None = None) -> Checkpoint:
    """Read the folder's description and tensor list (no tensor data yet)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "hf":
        from .hf_io import read_hf

        return read_hf(path)
    if fmt in ("dcp", "torchtitan"):
        from .dcp_io import read_dcp

        return read_dcp(path, fmt, flavor)
    if fmt == "tensorstore":
        from .tensorstore_io import read_tensorstore

        return read_tensorstore(path)
    if fmt == "megatron":
        from .megatron_io import read_megatron

        return read_megatron(path, flavor)
    raise ConversionError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}.")


def write_checkpoint(checkpoint: Checkpoint, out, fmt: str, dtype: torch.dtype | None = None,
                     optimizer: bool = False) -> Path:
    """Write `checkpoint` as `fmt` at `out` (atomically: a temporary folder renamed at the
    end). dtype: of the model and drafter weights (None keeps theirs); optimizer: keep the
    optimizer state (dcp only)."""
    out = Path(out)
    if optimizer and fmt != "dcp":
        raise ConversionError(f"--optimizer: only our dcp format holds optimizer state, not "
                              f"{fmt}.")
    if fmt == "hf":
        from .hf_io import write_hf

        return write_hf(checkpoint, out, dtype)
    if fmt in ("dcp", "torchtitan"):
        from .dcp_io import write_dcp

        return write_dcp(checkpoint, out, fmt, dtype, optimizer)
    if fmt == "tensorstore":
        from .tensorstore_io import write_tensorstore

        return write_tensorstore(checkpoint, out, dtype)
    if fmt == "megatron":
        from .megatron_io import write_megatron

        return write_megatron(checkpoint, out, dtype)
    raise ConversionError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}.")


def weights(checkpoint: Checkpoint, optimizer: bool = False) -> dict[str, Entry]:
    """The entries a conversion writes: model and drafter (and the optimizer's, if asked)."""
    return {key: entry for key, entry in checkpoint.entries.items()
            if optimizer or key.startswith(("model.", "drafter."))}


def converted(entry: Entry, dtype: torch.dtype | None) -> Entry:
    """The entry read in `dtype` (floating point only; None or an integer tensor: as is)."""
    if dtype is None or not entry.dtype.is_floating_point:
        return entry
    return Entry(entry.shape, dtype, lambda: entry.read().to(dtype))
