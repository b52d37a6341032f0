"""tensorstore folders: one zarr3 array per tensor in one OCDBT key-value store, chunked along
dim 0 (at most CHUNK_BYTES per chunk) so a reader takes a shard's rows without the rest. The
description (model, drafter, tensor list) is titan_spec_tensorstore.json beside the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .description import args_of, describe
from .hf_export import removed_on_failure, replace, temporary
from .store import Checkpoint, ConversionError, Entry, converted, weights

INDEX = "titan_spec_tensorstore.json"
CHUNK_BYTES = 16 << 20
_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
          torch.float64: "float64", torch.int64: "int64", torch.int32: "int32"}
_DTYPES = {name: dtype for dtype, name in _NAMES.items()}


def _spec(folder: Path, key: str) -> dict:
    return {"driver": "zarr3", "kvstore": {"driver": "ocdbt", "base": f"file://{folder}"},
            "path": key}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; tensorstore takes ml_dtypes'
        import ml_dtypes

        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.contiguous().numpy()


def _to_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
    if not shape:
        return []
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return [max(1, min(shape[0], CHUNK_BYTES // row)), *shape[1:]]


def write_tensorstore(checkpoint: Checkpoint, out: Path, dtype=None) -> Path:
    import tensorstore as ts

    tmp = temporary(out)
    tensors = {}
    with removed_on_failure(tmp, out):
        for key, entry in weights(checkpoint).items():
            entry = converted(entry, dtype)
            tensor = entry.read()
            itemsize = tensor.element_size()
            array = ts.open(_spec(tmp, key), create=True, dtype=_NAMES[tensor.dtype],
                            shape=list(tensor.shape),
                            chunk_layout=ts.ChunkLayout(
                                write_chunk_shape=chunk_shape(tuple(tensor.shape), itemsize))
                            ).result()
            array.write(_to_numpy(tensor)).result()
            tensors[key] = {"shape": list(tensor.shape), "dtype": _NAMES[tensor.dtype]}
            del tensor, array
        description = describe(checkpoint.model_name, checkpoint.args)
        description.update(drafter=checkpoint.drafter, tensors=tensors)
        (tmp / INDEX).write_text(json.dumps(description, indent=1))
    replace(tmp, out)
    return out


def read_box(folder: Path, key: str, dtype: torch.dtype, box=()) -> torch.Tensor:
    """Tensor `key`, or only the box of it (slices per dim), read from the store."""
    import tensorstore as ts

    array = ts.open(_spec(folder, key), open=True).result()
    return _to_torch(array[tuple(box)].read().result() if box else array.read().result(), dtype)


def read_tensorstore(folder: Path) -> Checkpoint:
    try:
        described = json.loads((folder / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConversionError(f"{folder / INDEX}: cannot read it ({err}).") from None
    checkpoint = Checkpoint("tensorstore", folder, described["model"],
                            args_of(described["model"], described["args"]),
                            drafter=described.get("drafter"))
    for key, info in described["tensors"].items():
        dtype = _DTYPES[info["dtype"]]
        checkpoint.entries[key] = Entry(tuple(info["shape"]), dtype,
                                        lambda key=key, dtype=dtype: read_box(folder, key, dtype))
    return checkpoint
