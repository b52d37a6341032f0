"""EAGLE-3 heads in the public Hugging Face layout (SpecForge's LlamaForCausalLMEagle3, as vLLM
and SGLang load them, e.g. a published Qwen3-8B EAGLE-3 head): config.json + model.safetensors
with `fc`, `midlayer.*`, `norm`, `lm_head`, `d2t`, `t2d` (and optionally `embed_tokens`).

config.json fields read: hidden_size, num_attention_heads, num_key_value_heads, head_dim,
intermediate_size, rms_norm_eps, rope_theta (or rope_parameters), max_position_embeddings,
vocab_size, draft_vocab_size, target_hidden_size, and the feature layers from
eagle_config.eagle_aux_hidden_state_layer_ids (default: the public recipe's 1, L/2-1, L-4)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from titan_spec.models.eagle3 import Eagle3Head, Eagle3Shape, check_aux_layers, default_aux_layers
from titan_spec.models.init import materialize
from titan_spec.models.qwen3.args import Qwen3Args

from .safetensors_folder import SafetensorsFolder, WeightsError

CONFIG = "config.json"
ARCHITECTURE = "LlamaForCausalLMEagle3"
_BLOCK = {"hidden_norm.weight": "hidden_norm.weight",
          "input_norm.weight": "input_layernorm.weight",
          "attention.wq.weight": "self_attn.q_proj.weight",
          "attention.wk.weight": "self_attn.k_proj.weight",
          "attention.wv.weight": "self_attn.v_proj.weight",
          "attention.wo.weight": "self_attn.o_proj.weight",
          "ffn_norm.weight": "post_attention_layernorm.weight",
          "feed_forward.w1.weight": "mlp.gate_proj.weight",
          "feed_forward.w3.weight": "mlp.up_proj.weight",
          "feed_forward.w2.weight": "mlp.down_proj.weight"}
# our state-dict name -> the public one
HF_NAMES = {"fc.weight": "fc.weight", "norm.weight": "norm.weight",
            "lm_head.weight": "lm_head.weight", "d2t": "d2t", "t2d": "t2d",
            **{f"block.{ours}": f"midlayer.{theirs}" for ours, theirs in _BLOCK.items()}}
OPTIONAL = ("embed_tokens.weight",)  # the target's embedding is used; a copy in the file is not


def is_eagle3_folder(path) -> bool:
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except json.JSONDecodeError:
        return False
    return any("Eagle3" in name for name in architectures)


def _config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise WeightsError(f"{folder} has no {CONFIG}; an EAGLE-3 head folder needs one.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not JSON ({err}).") from None
    for key, wanted in (("hidden_act", "silu"), ("num_hidden_layers", 1)):
        if config.get(key, wanted) != wanted:
            raise WeightsError(f"{path}: {key} = {config[key]!r}; an EAGLE-3 head here has "
                               f"{key} = {wanted!r}.")
    if config.get("rope_scaling"):
        raise WeightsError(f"{path}: rope_scaling is not supported.")
    return config


def head_spec(folder, target_args: Qwen3Args) -> tuple[Qwen3Args, Eagle3Shape]:
    """The head's block shape and EAGLE-3 shape from its config.json, checked against the
    target it will draft for."""
    folder = Path(folder)
    config = _config(folder)
    missing = [k for k in ("hidden_size", "num_attention_heads", "intermediate_size",
                           "vocab_size") if k not in config]
    if missing:
        raise WeightsError(f"{folder / CONFIG}: missing {', '.join(missing)}.")
    dim, heads = config["hidden_size"], config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    args = Qwen3Args(
        dim=dim, n_layers=1, n_heads=heads, n_kv_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or dim // heads, hidden_dim=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        max_seq_len=min(config.get("max_position_embeddings", target_args.max_seq_len),
                        target_args.max_seq_len),
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10_000.0))),
        norm_eps=config.get("rms_norm_eps", 1e-6))
    eagle = config.get("eagle_config") or {}
    layers = eagle.get("eagle_aux_hidden_state_layer_ids") or config.get(
        "eagle_aux_hidden_state_layer_ids") or default_aux_layers(target_args.n_layers)
    shape = Eagle3Shape(config.get("target_hidden_size", dim),
                        config.get("draft_vocab_size", config["vocab_size"]), tuple(layers))
    _check_fits(folder, args, shape, target_args)
    return args, shape


def _check_fits(folder: Path, args: Qwen3Args, shape: Eagle3Shape, target: Qwen3Args) -> None:
    where = folder / CONFIG
    if shape.target_dim != target.dim:
        raise WeightsError(f"{where}: target_hidden_size {shape.target_dim} != the policy's "
                           f"hidden size {target.dim}; this head drafts for another model.")
    if args.vocab_size != target.vocab_size:
        raise WeightsError(f"{where}: vocab_size {args.vocab_size} != the policy's "
                           f"{target.vocab_size}; this head drafts for another tokenizer.")
    if shape.draft_vocab_size > args.vocab_size:
        raise WeightsError(f"{where}: draft_vocab_size {shape.draft_vocab_size} exceeds "
                           f"vocab_size {args.vocab_size}.")
    try:
        check_aux_layers(shape.aux_layers, target.n_layers)
    except ValueError as err:
        raise WeightsError(f"{where}: {err}") from None


def _expected_shapes(head: Eagle3Head) -> dict[str, tuple[int, ...]]:
    state = head.state_dict()
    return {theirs: tuple(state[ours].shape) for ours, theirs in HF_NAMES.items()}


def load_eagle3_head(folder, target_args: Qwen3Args, device="cpu") -> Eagle3Head:
    """A public-layout EAGLE-3 head, every tensor checked (present, shape, no stranger)."""
    folder = Path(folder)
    args, shape = head_spec(folder, target_args)
    with torch.device("meta"):
        head = Eagle3Head(args, shape)
    head = materialize(head, torch.device(device))
    weights = SafetensorsFolder(folder)
    expected = _expected_shapes(head)
    unknown = sorted(set(weights.tensors) - set(expected) - set(OPTIONAL))
    if unknown:
        raise WeightsError(f"{folder}: tensors an EAGLE-3 head does not have: "
                           f"{', '.join(unknown[:5])}.")
    state = {}
    for ours, theirs in HF_NAMES.items():
        if theirs not in weights.tensors:
            raise WeightsError(f"{folder}: tensor '{theirs}' is missing.")
        if weights.shape(theirs) != expected[theirs]:
            raise WeightsError(f"{folder}: tensor '{theirs}' has shape {weights.shape(theirs)}, "
                               f"the config says {expected[theirs]}.")
        state[ours] = weights.read(theirs)
    weights.close()
    _check_vocab_map(folder, state["d2t"], state["t2d"])
    head.load_state_dict({k: v.to(head.state_dict()[k].dtype) for k, v in state.items()})
    return head.eval()


def _check_vocab_map(folder: Path, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
    ids = torch.arange(d2t.numel()) + d2t.long()
    if ids.min() < 0 or ids.max() >= t2d.numel() or ids.unique().numel() != ids.numel() \
            or not t2d.bool()[ids].all() or int(t2d.bool().sum()) != ids.numel():
        raise WeightsError(f"{folder}: d2t and t2d disagree (d2t must map the draft vocabulary "
                           f"onto distinct target ids, exactly the ones t2d marks).")


def save_eagle3_head(head: Eagle3Head, out, dtype: torch.dtype = torch.bfloat16,
                     extra_config: dict | None = None) -> Path:
    """The head in the public layout at `out` (written to a temporary folder renamed into
    place); floating tensors in `dtype`, d2t int64, t2d bool."""
    from safetensors.torch import save_file

    from .hf_export import removed_on_failure, replace, temporary

    out = Path(out)
    tmp = temporary(out)
    state = head.state_dict()
    tensors = {}
    for ours, theirs in HF_NAMES.items():
        tensor = state[ours].detach().cpu()
        tensors[theirs] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    with removed_on_failure(tmp, out):
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps({**eagle3_config(head, dtype),
                                              **(extra_config or {})}, indent=2))
    replace(tmp, out)
    return out


def eagle3_config(head: Eagle3Head, dtype: torch.dtype) -> dict:
    args, shape = head.args, head.shape
    return {
        "architectures": [ARCHITECTURE], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": args.dim, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim,
        "intermediate_size": args.hidden_dim, "num_hidden_layers": 1,
        "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta, "rope_scaling": None,
        "max_position_embeddings": args.max_seq_len, "vocab_size": args.vocab_size,
        "draft_vocab_size": shape.draft_vocab_size, "target_hidden_size": shape.target_dim,
        "tie_word_embeddings": False, "torch_dtype": str(dtype).removeprefix("torch."),
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(shape.aux_layers),
                         "use_aux_hidden_state": True},
    }
