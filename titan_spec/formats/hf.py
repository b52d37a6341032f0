"""Hugging Face checkpoints into a run: the model's shape from config.json, then every rank fills
its own FSDP2 / TP / EP shards from slice reads of the safetensors files (the box each DTensor
shard covers, the same box DCP saves), converting dtype on the way: no rank ever holds the full
model. Drafters load from HF folders too. (Out: hf_export.py.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from titan_spec.models import get_model_spec
from titan_spec.models.init import canonical_name

from .safetensors_folder import SafetensorsFolder, WeightsError

log = logging.getLogger("titan_spec")
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"


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


def load_hf_model(folder, model_name: str = "qwen3", device="cpu"):
    """A whole (unparallelised) model filled from an HF folder."""
    from titan_spec.models import build_model_from_args
    from titan_spec.models.init import materialize

    args = hf_model_args(model_name, folder)
    model = materialize(build_model_from_args(model_name, args), torch.device(device))
    load_into_shards(model, folder, model_name)
    return model


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
