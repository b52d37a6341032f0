"""Hugging Face folders out: from a run (parameters gathered one at a time from the shards) or
from the conversion tool (tensors read one at a time from another format). Either way the
family's HF adapter converts each tensor, shards are planned up front from the shapes and
streamed (safetensors_stream.py: memory is one tensor), and everything goes to a temporary folder
renamed into place at the end."""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError

from titan_spec import comm
from titan_spec.components.run_status import last_line
from titan_spec.models import get_model_spec
from titan_spec.models.init import canonical_name

from .hf import CONFIG, GENERATION_CONFIG, read_config
from .safetensors_folder import INDEX
from .safetensors_stream import ShardWriter

log = logging.getLogger("titan_spec")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "chat_template.jinja")


def temporary(out: Path) -> Path:
    """The hidden folder a write goes to before it is renamed to `out`."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


class ExportError(ValueError):
    """A write that failed (a full disk, a write error): its partial folder is gone."""


@contextmanager
def removed_on_failure(tmp: Path | None, out: Path):
    """Around the writing of `tmp` (the temporary folder of `out`): on a write error remove
    it and raise one ExportError naming `out`, the free space and the cause; anything already
    at `out` is untouched (replace() runs only after a complete write)."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:
        if tmp is None:
            raise
        free = shutil.disk_usage(tmp.parent).free / 2**20 if tmp.parent.is_dir() else 0.0
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"could not write {out} ({free:.1f} MiB were free on its "
                          f"filesystem): {type(err).__name__}: {last_line(err)}. "
                          f"Removed the partial {tmp.name}; nothing at {out} changed.") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace(tmp: Path, out: Path) -> None:
    """Put the finished folder in place; an older one at `out` goes only once the new one is
    there."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def barrier(group=None) -> None:
    if dist.is_available() and dist.is_initialized():
        comm.barrier(group=group)


def _shard_name(index: int, count: int) -> str:
    return "model.safetensors" if count == 1 else f"model-{index:05d}-of-{count:05d}.safetensors"


class HFWeightsWriter:
    """Our tensors in, HF shards out. shapes: our name -> global shape, in the order the
    tensors will be given."""

    def __init__(self, folder: Path, shapes: dict, args, adapter, dtype: torch.dtype,
                 max_shard_bytes: int):
        self.folder, self.args, self.adapter, self.dtype = folder, args, adapter, dtype
        size = torch.empty((), dtype=dtype).element_size()
        shards: list[list] = [[]]
        used = 0
        for name, shape in shapes.items():
            meta = torch.empty(shape, device="meta")
            for key, tensor in adapter.to_hf_items(name, meta, args):
                nbytes = tensor.numel() * size
                if used and used + nbytes > max_shard_bytes:
                    shards.append([])
                    used = 0
                shards[-1].append((key, tuple(tensor.shape), dtype))
                used += nbytes
        self.shards = [shard for shard in shards if shard]
        self.shard_of = {key: i for i, shard in enumerate(self.shards) for key, _, _ in shard}
        self.current: tuple[int, ShardWriter] | None = None
        self.total_bytes = 0

    def _writer(self, index: int) -> ShardWriter:
        if self.current is None or self.current[0] != index:
            if self.current is not None:
                self.current[1].close()
            path = self.folder / _shard_name(index + 1, len(self.shards))
            self.current = (index, ShardWriter(path, self.shards[index]))
        return self.current[1]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        for key, value in self.adapter.to_hf_items(name, tensor, self.args):
            value = value.to(self.dtype)
            self._writer(self.shard_of[key]).write(key, value)
            self.total_bytes += value.numel() * value.element_size()

    def close(self) -> None:
        if self.current is not None:
            self.current[1].close()
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": {key: _shard_name(i + 1, len(self.shards))
                                    for key, i in self.shard_of.items()}}
            (self.folder / INDEX).write_text(json.dumps(index, indent=2))


def write_metadata(folder: Path, args, adapter, dtype: str, source_folder=None,
                   tokenizer=None) -> None:
    """config.json (the source's, dtype updated, or one made from args), generation config and
    tokenizer files."""
    source = Path(source_folder) if source_folder else None
    if source is not None and (source / CONFIG).is_file():
        config = read_config(source)  # keeps fields we do not model (ids, architectures...)
    else:
        config = adapter.config_from_args(args, dtype)
        if tokenizer is not None:  # transformers aligns these with the tokenizer otherwise
            config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                          pad_token_id=tokenizer.pad_id)
    config.update(torch_dtype=dtype, dtype=dtype)
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    if source is not None and (source / GENERATION_CONFIG).is_file():
        shutil.copy2(source / GENERATION_CONFIG, folder / GENERATION_CONFIG)
    elif tokenizer is not None:
        stops = list(tokenizer.stop_ids)
        generation = {"eos_token_id": stops[0] if len(stops) == 1 else stops,
                      "pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.bos_id}
        (folder / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2))
    tokenizer_source = getattr(tokenizer, "folder", None) or source
    if tokenizer_source is None and hasattr(tokenizer, "write_files"):
        tokenizer.write_files(folder)  # the character tokenizer has no files of its own
    copy_tokenizer_files(tokenizer_source, folder)


def copy_tokenizer_files(source, folder: Path) -> None:
    for name in TOKENIZER_FILES if source is not None else ():
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, folder / name)


def _full(param) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return param.full_tensor() if isinstance(param, DTensor) else param.data


@torch.no_grad()
def export_hf(model, out, model_name: str, dtype: str, *, writer: bool, max_shard_bytes: int,
              source_folder=None, tokenizer=None) -> Path | None:
    """Write `model` as an HF folder at `out`. Every rank holding shards calls it (parameters
    are gathered one at a time); the `writer` rank writes. -> the folder (writer only)."""
    adapter, out = get_model_spec(model_name).hf, Path(out)
    params = [(canonical_name(name), param) for name, param in model.named_parameters()]
    tmp = temporary(out) if writer else None
    with removed_on_failure(tmp, out):
        weights = HFWeightsWriter(tmp, {name: tuple(p.shape) for name, p in params},
                                  model.args, adapter, DTYPES[dtype],
                                  max_shard_bytes) if writer else None
        for name, param in params:
            full = _full(param)  # a collective under FSDP2 / TP / EP: every rank takes part
            if writer:
                weights.write(name, full)
            del full
        if not writer:
            return None
        weights.close()
        write_metadata(tmp, model.args, adapter, dtype, source_folder, tokenizer)
    replace(tmp, out)
    log.info("exported %s (%s, %d shard(s)) to %s", model_name, dtype, len(weights.shards), out)
    return out


def write_heads(state: dict, out, kind: str, dtype: str) -> Path:
    """Drafter heads (eagle / mtp) at `out`, through a temporary folder renamed into place."""
    out = Path(out)
    tmp = temporary(out)
    with removed_on_failure(tmp, out):
        write_heads_into(tmp, state, kind, dtype)
    replace(tmp, out)
    return out


def write_heads_into(folder: Path, state: dict, kind: str, dtype: str) -> None:
    """Drafter heads' state dict as drafter.safetensors plus drafter.json, in `folder`."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(DTYPES[dtype], copy=True).contiguous()
             for name, tensor in state.items()}
    save_file(state, str(folder / "drafter.safetensors"), metadata={"format": "pt"})
    heads = len({name.split(".", 1)[0] for name in state})
    (folder / "drafter.json").write_text(json.dumps(
        {"format": "titan-spec-heads", "kind": kind, "num_heads": heads, "dtype": dtype,
         "tensors": {name: list(t.shape) for name, t in state.items()}}, indent=2))
