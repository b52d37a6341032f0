"""Hugging Face checkpoints into a run and out of it.

In: the model's shape from config.json, then every rank fills its own FSDP2 / TP / EP shards
from slice reads of the safetensors files (the box each DTensor shard covers, the same box DCP
saves), converting dtype on the way: no rank ever holds the full model.
Out: parameters gathered one at a time, converted by the model's HF adapter, written by the
first rank into shards of bounded size in a temporary folder renamed into place at the end."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from titan_spec.models import get_model_spec
from titan_spec.models.init import canonical_name

from .safetensors_folder import INDEX, SafetensorsFolder, WeightsError

log = logging.getLogger("titan_spec")
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "chat_template.jinja")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_config(folder) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise WeightsError(f"{folder} has no {CONFIG}: not a Hugging Face model folder "
                           "(checkpoint.initial_load_path must be one).")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not valid JSON ({err}).") from None


def hf_model_args(model_name: str, folder, **overrides):
    """The model's args from the folder's config.json (via the family's HF adapter)."""
    adapter = get_model_spec(model_name).hf
    args = adapter.args_from_config(read_config(folder), str(Path(folder) / CONFIG))
    return args.with_overrides(**overrides) if overrides else args


def check_weights(weights: SafetensorsFolder, args, adapter, shapes: dict) -> None:
    """Every tensor the model needs is there with its shape, and nothing else is.
    shapes: our parameter name -> global shape (a meta model's state dict gives them)."""
    expected = adapter.hf_keys(args)
    missing = sorted(expected - set(weights.tensors))
    if missing:
        raise WeightsError(f"{weights.folder}: tensor '{missing[0]}' is missing "
                           f"({len(missing)} missing in all); the folder does not hold the "
                           f"model its {CONFIG} describes.")
    optional = {"lm_head.weight"} if args.tie_embeddings else set()
    unknown = sorted(set(weights.tensors) - expected - optional)
    if unknown:
        file = weights.tensors[unknown[0]][0].name
        raise WeightsError(f"{weights.folder}/{file}: unexpected tensor '{unknown[0]}' "
                           f"({len(unknown)} unknown in all) for a {CONFIG} of this shape.")
    for name, source in adapter.sources(args).items():
        shape = tuple(shapes[name])
        want = [(shape[2], shape[1])] * shape[0] if source.stacked else [shape]
        for key, needed in zip(source.hf_keys, want, strict=True):
            if weights.shape(key) != needed:
                file = weights.tensors[key][0].name
                raise WeightsError(f"{weights.folder}/{file}: tensor '{key}' has shape "
                                   f"{list(weights.shape(key))}, the model of {CONFIG} needs "
                                   f"{list(needed)}.")


def global_shapes(model) -> dict[str, tuple[int, ...]]:
    return {canonical_name(name): tuple(tensor.shape)
            for name, tensor in model.state_dict(keep_vars=True).items()}


def local_box(param) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(this rank's local tensor of `param`, the global offset of its box). A plain tensor is
    its whole self."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(param, DTensor):
        return param.data, (0,) * param.dim()
    local = param.to_local()
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh,
                                                          param.placements)
    assert tuple(local.shape) == tuple(shape), (local.shape, shape)
    return local, tuple(offset)


@torch.no_grad()
def load_into_shards(model, folder, model_name: str) -> None:
    """Fill a materialised (possibly parallelised) model from an HF folder, each rank reading
    only the slices of its own shards."""
    adapter = get_model_spec(model_name).hf
    args = model.args
    weights = SafetensorsFolder(folder)
    check_weights(weights, args, adapter, global_shapes(model))
    sources = adapter.sources(args)
    try:
        for name, param in model.named_parameters():
            local, offset = local_box(param)
            if local.numel() == 0:
                continue
            data = sources[canonical_name(name)].read_box(weights.read, offset, local.shape)
            local.copy_(data.to(local.dtype))
    finally:
        weights.close()


def _shard_plan(model, adapter, dtype: torch.dtype, max_shard_bytes: int) -> dict[str, int]:
    """HF tensor name -> shard index (1-based), filled in the order export writes them."""
    plan, shard, used = {}, 1, 0
    size = torch.empty((), dtype=dtype).element_size()
    for name, param in model.named_parameters():
        meta = torch.empty(param.shape, device="meta")
        for key, tensor in adapter.to_hf_items(canonical_name(name), meta, model.args):
            nbytes = tensor.numel() * size
            if used and used + nbytes > max_shard_bytes:
                shard, used = shard + 1, 0
            plan[key], used = shard, used + nbytes
    return plan


def _shard_name(index: int, count: int) -> str:
    return "model.safetensors" if count == 1 else f"model-{index:05d}-of-{count:05d}.safetensors"


def _full(param) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return param.full_tensor() if isinstance(param, DTensor) else param.data


@torch.no_grad()
def export_hf(model, out, model_name: str, dtype: str, *, writer: bool, max_shard_bytes: int,
              source_folder=None, tokenizer=None) -> Path | None:
    """Write `model` as an HF folder at `out`. Every rank holding shards calls it (parameters
    are gathered one at a time); the `writer` rank writes. -> the folder (writer only)."""
    from safetensors.torch import save_file

    adapter, torch_dtype, out = get_model_spec(model_name).hf, DTYPES[dtype], Path(out)
    plan = _shard_plan(model, adapter, torch_dtype, max_shard_bytes)
    count = max(plan.values(), default=1)
    tmp = out.parent / f".{out.name}.tmp"
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    pending: dict[str, torch.Tensor] = {}

    def flush(shard: int) -> None:
        save_file(pending, str(tmp / _shard_name(shard, count)), metadata={"format": "pt"})
        pending.clear()

    shard = 1
    for name, param in model.named_parameters():
        full = _full(param)  # a collective under FSDP2 / TP / EP: every rank takes part
        if not writer:
            continue
        for key, tensor in adapter.to_hf_items(canonical_name(name), full, model.args):
            if plan[key] != shard:
                flush(shard)
                shard = plan[key]
            pending[key] = tensor.to(torch_dtype, copy=True).contiguous()
        del full
    if not writer:
        return None
    flush(shard)
    if count > 1:
        total = sum(t["bytes"] for t in _sizes(tmp).values())
        index = {"metadata": {"total_size": total},
                 "weight_map": {key: _shard_name(i, count) for key, i in plan.items()}}
        (tmp / INDEX).write_text(json.dumps(index, indent=2))
    _write_metadata(tmp, model.args, adapter, dtype, source_folder, tokenizer)
    _replace(tmp, out)
    log.info("exported %s (%s, %d shard(s)) to %s", model_name, dtype, count, out)
    return out


def _sizes(folder: Path) -> dict[str, dict]:
    return {p.name: {"bytes": p.stat().st_size} for p in folder.glob("*.safetensors")}


def _write_metadata(folder: Path, args, adapter, dtype: str, source_folder, tokenizer) -> None:
    source = Path(source_folder) if source_folder else None
    if source is not None and (source / CONFIG).is_file():
        config = read_config(source)  # keeps fields we do not model (ids, architectures...)
    else:
        config = adapter.config_from_args(args, dtype)
    config.update(torch_dtype=dtype, dtype=dtype)
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    if source is not None and (source / GENERATION_CONFIG).is_file():
        shutil.copy2(source / GENERATION_CONFIG, folder / GENERATION_CONFIG)
    elif tokenizer is not None:
        stops = list(tokenizer.stop_ids)
        generation = {"eos_token_id": stops[0] if len(stops) == 1 else stops,
                      "pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.bos_id}
        (folder / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2))
    tokenizer_folder = getattr(tokenizer, "folder", None)
    for name in TOKENIZER_FILES:
        if tokenizer_folder is not None and (Path(tokenizer_folder) / name).is_file():
            shutil.copy2(Path(tokenizer_folder) / name, folder / name)


def _replace(tmp: Path, out: Path) -> None:
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
        dist.barrier(group=group)


def write_heads(heads, out, kind: str, dtype: str) -> Path:
    """Drafter heads (eagle / mtp) as one safetensors file plus a JSON description, written to
    a temporary folder renamed into place."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {name: tensor.detach().to(DTYPES[dtype], copy=True).contiguous()
             for name, tensor in heads.state_dict().items()}
    save_file(state, str(tmp / "drafter.safetensors"), metadata={"format": "pt"})
    (tmp / "drafter.json").write_text(json.dumps(
        {"format": "titan-spec-heads", "kind": kind, "num_heads": len(heads), "dtype": dtype,
         "tensors": {name: list(t.shape) for name, t in state.items()}}, indent=2))
    _replace(tmp, out)
    return out


def is_hf_folder(path) -> bool:
    return bool(path) and (Path(path) / CONFIG).is_file()


@torch.no_grad()
def load_drafter_folder(module, kind: str, folder, model_name: str, tokenizer=None) -> None:
    """A drafter from a folder: an HF model (a draft_model, e.g. Qwen3-0.6B for Qwen3-8B; its
    tokenizer must be the policy's) or heads exported by write_heads."""
    folder = Path(folder)
    if (folder / "drafter.json").is_file():
        _load_heads(module, kind, folder)
        return
    if kind != "draft_model" or not is_hf_folder(folder):
        raise WeightsError(f"drafter.init_from={folder}: a {kind} drafter loads from a folder "
                           "with drafter.json (a step-N-hf-drafter export); a Hugging Face "
                           "model folder (config.json) is a draft_model.")
    _check_same_tokenizer(folder, tokenizer)
    load_into_shards(module, folder, model_name)


def _check_same_tokenizer(folder: Path, tokenizer) -> None:
    theirs = folder / "tokenizer.json"
    ours = getattr(tokenizer, "_tok", None)
    if not theirs.is_file() or ours is None:
        return  # nothing to compare: the vocabulary-size check still applies
    from tokenizers import Tokenizer

    if Tokenizer.from_file(str(theirs)).get_vocab() != ours.get_vocab():
        raise WeightsError(f"drafter.init_from={folder}: its tokenizer.json is not the policy's "
                           f"({tokenizer.file}); a draft model must share the policy's "
                           "tokenizer (e.g. Qwen3-0.6B for Qwen3-8B).")


def _load_heads(module, kind: str, folder: Path) -> None:
    from safetensors.torch import load_file

    described = json.loads((folder / "drafter.json").read_text())
    if described.get("kind") != kind:
        raise WeightsError(f"drafter.init_from={folder} holds a {described.get('kind')} drafter; "
                           f"this run's drafter.kind is {kind}.")
    state = load_file(str(folder / "drafter.safetensors"))
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsError(f"drafter.init_from={folder} does not fit this config's {kind} "
                           f"drafter ({str(err).splitlines()[0]}).") from None
