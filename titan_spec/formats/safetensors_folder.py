"""A folder of safetensors weights as Hugging Face writes it: `model.safetensors`, or shards
named by `model.safetensors.index.json`. Opening it checks what can be checked without reading a
tensor (index, files, headers, sizes), so a broken folder fails before any rank loads a byte;
reads are slices, so a rank takes only what its shard holds."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class WeightsError(ValueError):
    """A weights folder that is incomplete, damaged or does not fit the model."""


def read_header(path: Path) -> dict:
    """The safetensors JSON header of `path`, checked against the file's size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: {size} bytes, too short for a safetensors file.")
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            raise WeightsError(f"{path}: truncated; its header needs {8 + length} bytes, the "
                               f"file has {size}.")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightsError(f"{path}: safetensors header is not valid JSON ({err}).") from None
    header.pop("__metadata__", None)
    for key, info in header.items():
        end = 8 + length + info["data_offsets"][1]
        if end > size:
            raise WeightsError(f"{path}: truncated; tensor '{key}' ends at byte {end}, the file "
                               f"has {size}.")
    return header


class SafetensorsFolder:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.files = self._files()
        self.tensors: dict[str, tuple[Path, tuple[int, ...], str]] = {}  # key -> file, shape, dtype
        for file, wanted in self.files.items():
            header = read_header(file)
            for key in wanted or ():
                if key not in header:
                    raise WeightsError(f"{self.folder / INDEX} places tensor '{key}' in "
                                       f"{file.name}, which does not hold it.")
            for key, info in header.items():  # a tensor the index forgot still counts
                if key in self.tensors and (wanted is None or key not in wanted):
                    continue
                self.tensors[key] = (file, tuple(info["shape"]), info["dtype"])
        self._open: tuple[Path, object] | None = None

    def _files(self) -> dict[Path, list[str] | None]:
        """file -> the keys the index puts there (None: every key of a single file)."""
        if not self.folder.is_dir():
            raise WeightsError(f"{self.folder} is not a folder of Hugging Face weights.")
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise WeightsError(f"{index}: not a safetensors index ({err}).") from None
            files: dict[Path, list[str]] = {}
            for key, name in weight_map.items():
                files.setdefault(self.folder / name, []).append(key)
            for file, keys in files.items():
                if not file.is_file():
                    raise WeightsError(f"{index} names {file.name} (holding '{keys[0]}' and "
                                       f"{len(keys) - 1} more), which is missing.")
            return files
        if (self.folder / SINGLE).is_file():
            return {self.folder / SINGLE: None}
        raise WeightsError(f"{self.folder} has neither {SINGLE} nor {INDEX}.")

    def shape(self, key: str) -> tuple[int, ...]:
        return self.tensors[key][1]

    def nbytes(self, key: str) -> int:
        _, shape, dtype = self.tensors[key]
        return _DTYPE_BYTES.get(dtype, 0) * int(torch.Size(shape).numel())

    def read(self, key: str, box: tuple[slice, ...] | None = None) -> torch.Tensor:
        """Tensor `key`, or only the box of it (slices per dim), read from its file."""
        from safetensors import safe_open

        file = self.tensors[key][0]
        if self._open is None or self._open[0] != file:
            # One file open at a time: its mapped pages are released when the next opens.
            self._open = (file, safe_open(str(file), framework="pt"))
        handle = self._open[1]
        if box is None:
            return handle.get_tensor(key)
        return handle.get_slice(key)[box]

    def close(self) -> None:
        self._open = None
