"""Where a job's model comes from: its shape (a flavor, or an HF folder's config.json), its
tokenizer (model.tokenizer, or 'auto': the HF folder's), and the weights it starts from when
there is no checkpoint to resume (random init, an HF folder, or one of our step folders)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from titan_spec.models import build_model_from_args, get_model_spec

from .hf import check_weights, global_shapes, hf_model_args, load_into_shards
from .safetensors_folder import SafetensorsFolder, WeightsError

log = logging.getLogger("titan_spec")


def hf_folder(cfg) -> str | None:
    """The HF folder the job starts from, or None."""
    ckpt = cfg.checkpoint
    return ckpt.initial_load_path if ckpt.initial_load_path and \
        ckpt.initial_load_format == "hf" else None


def model_args(cfg):
    """The job's model shape: the HF folder's config.json, else model.flavor."""
    overrides = {"attention_fp64": cfg.model.attention_fp64}
    folder = hf_folder(cfg)
    if folder:
        return hf_model_args(cfg.model.name, folder, **overrides)
    return get_model_spec(cfg.model.name).args(cfg.model.flavor, **overrides)


def tokenizer_spec(cfg) -> str:
    """model.tokenizer with 'auto' resolved."""
    if cfg.model.tokenizer != "auto":
        return cfg.model.tokenizer
    return hf_folder(cfg) or "char"


def check_initial_load(cfg, vocab_size: int | None = None) -> None:
    """Before any rank loads a byte: the folder, its tensors and their shapes fit the model,
    and the tokenizer fits its vocabulary. (The launcher's preflight runs this.)"""
    folder = hf_folder(cfg)
    if folder is None:
        if cfg.checkpoint.initial_load_path and not Path(cfg.checkpoint.initial_load_path).is_dir():
            raise WeightsError(f"checkpoint.initial_load_path={cfg.checkpoint.initial_load_path} "
                               "is not a folder; give one of our step-N folders.")
        return
    spec = get_model_spec(cfg.model.name)
    args = model_args(cfg)
    model = build_model_from_args(cfg.model.name, args)
    if vocab_size is not None and vocab_size > args.vocab_size:
        raise WeightsError(f"the tokenizer ({tokenizer_spec(cfg)}) has {vocab_size} tokens, "
                           f"more than the {args.vocab_size} rows of {folder}/config.json's "
                           "vocabulary: they are not a pair.")
    check_weights(SafetensorsFolder(folder), args, spec.hf, global_shapes(model))


@torch.no_grad()
def load_initial_weights(model, cfg) -> bool:
    """Fill a materialised model from checkpoint.initial_load_path; -> whether it did."""
    path = cfg.checkpoint.initial_load_path
    if not path:
        return False
    if cfg.checkpoint.initial_load_format == "hf":
        load_into_shards(model, path, cfg.model.name)
    else:
        _load_dcp_model(model, Path(path))
    log.info("initial weights loaded from %s (%s)", path, cfg.checkpoint.initial_load_format)
    return True


def _load_dcp_model(model, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from titan_spec.components.checkpoint import CheckpointError, verify

    verify(path)
    state = {"model": get_model_state_dict(model)}
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as err:
        raise CheckpointError(f"could not load the model weights of {path} ({err}).") from err
    set_model_state_dict(model, state["model"])
