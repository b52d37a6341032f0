"""Write a safetensors file one tensor at a time: the header (every name, dtype, shape and
offset) is known from the plan, so it goes first and each tensor's bytes follow as they come.
Memory is one tensor, whatever the shard size."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
                      torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
TORCH_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}


class ShardWriter:
    def __init__(self, path: Path, tensors: list[tuple[str, tuple[int, ...], torch.dtype]]):
        """tensors: (name, shape, dtype) in the order they will be written."""
        header, offset = {}, 0
        for name, shape, dtype in tensors:
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self.path, self.order = path, [name for name, _, _ in tensors]
        self.expected = {name: (tuple(shape), dtype) for name, shape, dtype in tensors}
        self.file = path.open("wb")
        self.file.write(struct.pack("<Q", len(raw)) + raw)
        self.written = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self.written >= len(self.order) or self.order[self.written] != name:
            raise RuntimeError(f"{self.path}: '{name}' written out of the planned order.")
        shape, dtype = self.expected[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise RuntimeError(f"{self.path}: '{name}' is {tuple(tensor.shape)} {tensor.dtype}, "
                               f"planned {shape} {dtype}.")
        data = tensor.detach().contiguous().cpu()
        self.file.write(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        self.written += 1

    def close(self) -> None:
        self.file.close()
        if self.written != len(self.order):
            raise RuntimeError(f"{self.path}: {self.written} of {len(self.order)} tensors "
                               "written.")
