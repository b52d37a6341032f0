"""One dataclass per TOML table. Every field carries its help text in `metadata["help"]`;
the README's config reference is generated from these (tools/config_reference.py) and a test
keeps the two in sync. This module must not import torch: the launcher validates configs
before it spawns any worker."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def opt(default, help: str, choices: tuple | None = None):
    """A config field with its help text (and optional allowed values)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Job:
    name: str = opt("debug", "Run name, used in logs and as the TensorBoard run name.")
    dump_folder: str = opt(
        "./outputs/debug", "Folder for metrics.jsonl, checkpoints and TensorBoard events."
    )
    seed: int = opt(0, "Seed for weight init, data order and sampling; same seed, same run.")
    description: str = opt("", "Free text, printed at start-up.")
    dry_run: bool = opt(
        False, "Plan only: build the model on the meta device, apply the parallel plans on a fake "
        "process group of the full world size, print per-rank memory, write dry_run.json, exit."
    )
    world_size: int = opt(
        0, "Ranks of the whole job for a dry run (0: the launcher's NPROC).")
    device_memory_gib: float = opt(
        141.0, "Memory of one accelerator (H200: 141), for the dry run's fits / does-not-fit.")


@dataclass
class Model:
    name: str = opt("qwen3", "Model family in the registry (titan_spec.models.registry).")
    flavor: str = opt("debug", "Shape preset of the family, e.g. debug, debug_moe, 0.6B, 8B.")
    tokenizer: str = opt(
        "char", "'char' for the built-in character tokenizer of the synthetic tasks, "
        "or a path to a Hugging Face tokenizer.json."
    )
    attention_fp64: bool = opt(
        False, "Compute attention in float64 (CPU fp32 runs): rollout (KV cache) and learner "
        "(full sequence) logprobs then agree to ~1e-6 instead of ~1e-5; costs some attention "
        "time."
    )


@dataclass
class RolloutParallelism:
    ranks: int = opt(
        0, "Ranks of the separate rollout mesh (async RL), taken from the end of the world; "
        "0 keeps rollouts colocated with the learner (synchronous RL)."
    )
    tp: int = opt(
        1, "Tensor-parallel degree of each rollout replica (dp = ranks / tp); it splits "
        "heads, SwiGLU columns and every MoE expert's columns."
    )


@dataclass
class Parallelism:
    dp_replicate: int = opt(1, "Data-parallel replicas (HSDP outer axis); parameters replicated.")
    dp_shard: int = opt(
        -1, "FSDP2 shard degree; -1 means all ranks not used by dp_replicate and tp."
    )
    tp: int = opt(1, "Tensor-parallel degree (DTensor colwise/rowwise plans).")
    ep: int = opt(
        1, "Expert-parallel degree for MoE; experts are sharded over ranks borrowed from "
        "dp_shard, so ep must divide dp_shard."
    )
    activation_checkpoint: str = opt(
        "none", "Recompute activations in backward: none or full (every block).",
        choices=("none", "full"),
    )
    compile: bool = opt(False, "torch.compile each transformer block (CUDA only; ignored on CPU).")
    param_dtype: str = opt(
        "float32", "FSDP2 mixed-precision compute dtype for parameters (bfloat16 on GPU).",
        choices=("float32", "bfloat16"),
    )
    reduce_dtype: str = opt(
        "float32", "FSDP2 gradient reduce-scatter dtype.", choices=("float32", "bfloat16")
    )
    rollout: RolloutParallelism = field(
        default_factory=RolloutParallelism,
        metadata={"help": "The rollout mesh of async RL ([parallelism.rollout])."},
    )


@dataclass
class Training:
    global_batch_size: int = opt(
        16, "Sequences per optimizer step across all data-parallel ranks."
    )
    grad_accum_steps: int = opt(
        1, "Micro-batches per optimizer step on each rank (global batch / dp / this per forward)."
    )
    seq_len: int = opt(128, "Maximum tokens per training sequence (longer samples are an error).")
    max_grad_norm: float = opt(
        1.0, "Gradient clipping threshold on the global L2 norm; 0 disables."
    )
    device: str = opt(
        "auto", "auto (CUDA when present, else CPU), cpu or cuda.", choices=("auto", "cpu", "cuda")
    )
    threads_per_rank: int = opt(
        1, "torch intra-op threads per CPU rank (ranks share the cores; 1 avoids oversubscription)."
    )


@dataclass
class Task:
    name: str = opt(
        "arithmetic", "Verifiable task (rl/tasks registry): arithmetic, countdown, sorting "
        "(generated on the fly) or jsonl (a dataset file)."
    )
    min_digits: int = opt(1, "arithmetic: smallest operand length.")
    max_digits: int = opt(3, "arithmetic: largest operand length.")
    min_items: int = opt(3, "countdown / sorting: fewest numbers per problem.")
    max_items: int = opt(4, "countdown / sorting: most numbers per problem.")
    path: str = opt(
        "", "jsonl: file with one {\"prompt\": ..., \"answer\": ...} object per line "
        "(\"solution\" too for SFT)."
    )
    on_bad_line: str = opt(
        "error", "jsonl: a malformed line stops the run (error) or is skipped and counted (skip).",
        choices=("error", "skip"),
    )


@dataclass
class SFT:
    steps: int = opt(200, "Supervised warm-start steps before RL (0 skips SFT).")
    eval_problems: int = opt(
        64, "Held-out problems solved greedily before and after SFT (accuracy is logged as "
        "phase 'eval'); 0 disables."
    )


@dataclass
class RL:
    steps: int = opt(0, "GRPO steps after the SFT warm-start (0: SFT only).")
    prompts_per_step: int = opt(
        16, "Prompts per RL step across all data-parallel ranks (each is sampled group_size "
        "times)."
    )
    group_size: int = opt(4, "Samples per prompt (G); advantages are relative to the group.")
    lr: float = opt(1e-4, "Constant learning rate of the RL phase (after rl.warmup_steps).")
    warmup_steps: int = opt(0, "Linear warm-up of the RL learning rate.")
    loss: str = opt("grpo", "Policy loss (rl/losses.py registry).", choices=("grpo",))
    clip_low: float = opt(0.2, "Lower PPO clip: ratios below 1 - clip_low stop the gradient.")
    clip_high: float = opt(
        0.28, "Upper PPO clip (DAPO clip-higher: larger than clip_low keeps exploration).")
    kl_coef: float = opt(
        0.0, "Weight of the k3 KL penalty to the reference policy (the policy at RL start); "
        "0 keeps no reference copy."
    )
    normalize_std: bool = opt(
        True, "Divide group advantages by the group's reward std (GRPO); false is Dr. GRPO.")
    dynamic_sampling: bool = opt(
        False, "Drop groups whose rewards are all equal (DAPO dynamic sampling); they carry "
        "no gradient."
    )
    minibatches: int = opt(
        1, "Optimizer steps per rollout batch (PPO minibatches); 1 is on-policy.")
    eval_problems: int = opt(
        64, "Held-out problems solved greedily before and after RL (phase 'eval'); 0 disables.")
    max_policy_lag: int = opt(
        1, "Async RL: batch s is generated with policy version s - 1 - max_policy_lag, so the "
        "learner trains on samples at most this many versions old (0: no overlap)."
    )
    is_cap: float = opt(
        2.0, "Async RL: truncation of the per-token importance weight pi_learner / "
        "pi_behaviour for lagged samples (truncated IS)."
    )
    stale_policy: str = opt(
        "wait", "Async RL, groups older than max_policy_lag: the rollout side waits for the "
        "version each batch needs, so none arise (wait); or it never waits for weights, "
        "generating with the newest it has received, and the learner drops groups that arrive "
        "too old (drop).", choices=("wait", "drop"),
    )
    inflight_weight_updates: bool = opt(
        False, "Async RL with stale_policy=drop: also take new weights between decode "
        "iterations, mid-batch (tokens already in the KV cache stay; each later token is "
        "sampled from the new weights). A batch counts as the version it started from."
    )


@dataclass
class Rollout:
    max_new_tokens: int = opt(64, "Largest completion length; longer samples stop at it.")
    temperature: float = opt(1.0, "Sampling temperature (0 is greedy).")
    top_p: float = opt(1.0, "Nucleus sampling threshold (1 disables).")
    top_k: int = opt(0, "Top-k sampling (0 disables).")
    max_batch_size: int = opt(
        32, "Sequences decoded at once on each rank (continuous batching slots); sets the KV "
        "cache size."
    )


@dataclass
class Drafter:
    kind: str = opt(
        "eagle", "Speculative drafter: none (plain sampling), ngram, draft_model, eagle or mtp.",
        choices=("none", "ngram", "draft_model", "eagle", "mtp"),
    )
    num_draft_tokens: int = opt(4, "Tokens drafted per verify step (k).")
    adaptive: bool = opt(
        False, "Choose k in [0, num_draft_tokens] each iteration from measured costs and "
        "acceptance (tp=1 only: ranks would choose differently)."
    )
    draft_flavor: str = opt("debug", "draft_model: model flavor of the draft model.")
    draft_layers: int = opt(1, "draft_model: decoder layers of the draft model.")
    num_heads: int = opt(2, "mtp: number of prediction heads.")
    warmup_steps: int = opt(
        200, "Distillation steps of the drafter on the task after SFT, before RL (skipped "
        "when the checkpoint already holds a drafter, or with init_from)."
    )
    init_from: str = opt(
        "", "State dict of an already distilled drafter of this kind (the --out file of "
        "tools/distill_drafter.py); replaces the warm-up distillation."
    )
    online: bool = opt(
        True, "Adapt the drafter during RL on each rollout batch, from the learner's detached "
        "logits and hidden states."
    )
    lr: float = opt(1e-3, "Drafter learning rate (its own AdamW and clipping).")
    max_grad_norm: float = opt(1.0, "Drafter gradient clipping threshold; 0 disables.")
    collapse_threshold: float = opt(
        0.05, "Warn loudly when the first draft position's acceptance rate falls below this."
    )


@dataclass
class Optimizer:
    name: str = opt("adamw", "Optimizer (adamw).", choices=("adamw",))
    lr: float = opt(1e-3, "Peak learning rate.")
    beta1: float = opt(0.9, "AdamW beta1.")
    beta2: float = opt(0.95, "AdamW beta2.")
    eps: float = opt(1e-8, "AdamW epsilon.")
    weight_decay: float = opt(0.1, "Decoupled weight decay (not applied to norms and biases).")


@dataclass
class LRScheduler:
    warmup_steps: int = opt(10, "Linear warm-up steps from 0 to the peak learning rate.")
    decay: str = opt(
        "cosine", "Shape after warm-up: cosine, linear or constant.",
        choices=("cosine", "linear", "constant"),
    )
    min_lr_ratio: float = opt(0.1, "Final learning rate as a fraction of the peak.")


@dataclass
class Checkpoint:
    enable: bool = opt(True, "Save DCP checkpoints.")
    folder: str = opt("checkpoint", "Checkpoint folder, relative to job.dump_folder.")
    interval: int = opt(100, "Save every this many steps (and at the last step).")
    keep_latest_k: int = opt(3, "Keep this many newest checkpoints; 0 keeps all.")
    load_path: str = opt(
        "", "Checkpoint step folder to resume from; empty resumes from the newest complete "
        "checkpoint in `folder` if there is one."
    )
    resume: bool = opt(True, "Resume from the newest checkpoint in `folder` when present.")


@dataclass
class Metrics:
    log_freq: int = opt(1, "Console progress line every this many steps.")
    enable_tensorboard: bool = opt(True, "Also write TensorBoard events when it is installed.")
    log_all_ranks: bool = opt(False, "Print console logs from every rank, not only rank 0.")


@dataclass
class JobConfig:
    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    parallelism: Parallelism = field(default_factory=Parallelism)
    training: Training = field(default_factory=Training)
    task: Task = field(default_factory=Task)
    sft: SFT = field(default_factory=SFT)
    rl: RL = field(default_factory=RL)
    rollout: Rollout = field(default_factory=Rollout)
    drafter: Drafter = field(default_factory=Drafter)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    metrics: Metrics = field(default_factory=Metrics)


# Table name -> its dataclass, in file order (the loader's and the reference's view).
TABLES: dict[str, type] = {f.name: f.default_factory for f in fields(JobConfig)}
