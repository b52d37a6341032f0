"""Hugging Face config.json <-> Qwen3Args. A field titan-spec cannot honour is an error naming
it, never a silently different model."""

from __future__ import annotations

from .args import Qwen3Args

MODEL_TYPES = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


class HFConfigError(ValueError):
    pass


def _rope_theta(config: dict, where: str) -> float:
    # transformers >= 5 writes rope_parameters; published Qwen3 configs have rope_theta and
    # rope_scaling at the top level.
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling")
    kind = (params.get("rope_type") or params.get("type") or "default") if params else "default"
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise HFConfigError(
            f"{where}: rope type '{kind}' (rope_scaling / rope_parameters) is not implemented by "
            "titan-spec, which has plain RoPE only; use a checkpoint without rope scaling, or "
            "remove it from config.json if you do not need the longer context.")
    theta = params.get("rope_theta", config.get("rope_theta"))
    if theta is None:
        raise HFConfigError(f"{where}: no rope_theta (nor rope_parameters.rope_theta).")
    return float(theta)


def _refuse(config: dict, where: str) -> None:
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise HFConfigError(f"{where}: model_type '{model_type}' is not supported; titan-spec "
                            f"loads {', '.join(MODEL_TYPES)} checkpoints.")
    if config.get("attention_bias"):
        raise HFConfigError(f"{where}: attention_bias=true is not supported (Qwen3 attention "
                            "has no bias).")
    if config.get("use_sliding_window"):
        raise HFConfigError(f"{where}: use_sliding_window=true is not supported (titan-spec "
                            "attends over the full window).")
    if config.get("hidden_act", "silu") != "silu":
        raise HFConfigError(f"{where}: hidden_act '{config['hidden_act']}' is not supported "
                            "(SwiGLU with silu only).")
    if model_type == "qwen3_moe":
        if config.get("decoder_sparse_step", 1) != 1 or config.get("mlp_only_layers"):
            raise HFConfigError(f"{where}: decoder_sparse_step != 1 / mlp_only_layers (dense "
                                "layers inside an MoE model) are not supported.")
        if config.get("shared_expert_intermediate_size"):
            raise HFConfigError(f"{where}: shared experts are not supported.")


def _field(config: dict, key: str, where: str):
    if key not in config:
        raise HFConfigError(f"{where}: missing field '{key}'.")
    return config[key]


def args_from_hf_config(config: dict, where: str = "config.json") -> Qwen3Args:
    _refuse(config, where)
    heads = _field(config, "num_attention_heads", where)
    dim = _field(config, "hidden_size", where)
    moe = config["model_type"] == "qwen3_moe"
    experts = config.get("num_experts", config.get("num_local_experts", 0)) if moe else 0
    if moe and not experts:
        raise HFConfigError(f"{where}: qwen3_moe config without num_experts.")
    return Qwen3Args(
        dim=dim,
        n_layers=_field(config, "num_hidden_layers", where),
        n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or dim // heads,
        hidden_dim=_field(config, "intermediate_size", where),
        vocab_size=_field(config, "vocab_size", where),
        max_seq_len=config.get("max_position_embeddings", 4096),
        rope_theta=_rope_theta(config, where),
        norm_eps=config.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        num_experts=experts,
        top_k=config.get("num_experts_per_tok", 0) if moe else 0,
        moe_hidden_dim=config.get("moe_intermediate_size", 0) if moe else 0,
        norm_topk_prob=bool(config.get("norm_topk_prob", False)) if moe else True,
        aux_loss_coef=config.get("router_aux_loss_coef", 0.001) if moe else 0.001,
    )


def hf_config_from_args(args: Qwen3Args, dtype: str) -> dict:
    """A config.json that transformers loads as Qwen3 / Qwen3-MoE of exactly these shapes."""
    model_type = "qwen3_moe" if args.is_moe else "qwen3"
    config = {
        "architectures": [MODEL_TYPES[model_type]], "model_type": model_type,
        "hidden_size": args.dim, "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads, "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim, "intermediate_size": args.hidden_dim,
        "vocab_size": args.vocab_size, "max_position_embeddings": args.max_seq_len,
        "rope_theta": args.rope_theta, "rope_scaling": None, "rms_norm_eps": args.norm_eps,
        "tie_word_embeddings": args.tie_embeddings, "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "use_sliding_window": False,
        "sliding_window": None, "torch_dtype": dtype,
    }
    if args.is_moe:
        config.update(num_experts=args.num_experts, num_experts_per_tok=args.top_k,
                      moe_intermediate_size=args.moe_hidden_dim,
                      norm_topk_prob=args.norm_topk_prob, decoder_sparse_step=1,
                      mlp_only_layers=[], router_aux_loss_coef=args.aux_loss_coef)
    return config
