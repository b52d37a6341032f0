"""One dataclass per TOML table. Every field carries its help text in `metadata["help"]`;
the README's config reference is generated from these (tools/config_reference.py) and a test
keeps the two in sync. This module must not import torch: the launcher validates configs
before it spawns any worker."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .options import opt
from .rl_tables import RL, SFT, AsyncRL, Drafter, Rollout, Task


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
    link_gb_per_s: float = opt(
        50.0, "Network bandwidth of one rank, GB/s, for the dry run's weight-sync time (one "
        "400 Gb/s InfiniBand link per GPU: 50).")


@dataclass
class Model:
    name: str = opt("qwen3", "Model family in the registry (titan_spec.models.registry).")
    flavor: str = opt("debug", "Shape preset of the family, e.g. debug, debug_moe, 0.6B, 8B.")
    tokenizer: str = opt(
        "auto", "auto (the tokenizer of checkpoint.initial_load_path when that is a Hugging "
        "Face folder, else char), char (the built-in character tokenizer of the synthetic "
        "tasks), or a path to a tokenizer.json or a folder holding one."
    )
    attention_fp64: bool = opt(
        False, "Compute attention in float64 (CPU fp32 runs): rollout (KV cache) and learner "
        "(full sequence) logprobs then agree to ~1e-6 instead of ~1e-5; costs some attention "
        "time."
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
    lm_head_fp32: bool = opt(
        False, "Keep the LM head in float32 under param_dtype = bfloat16 (its own FSDP2 "
        "mixed-precision policy; logits come out float32): the largest single source of "
        "rollout-vs-learner mismatch in bf16. Needs an untied head (not tie_word_embeddings)."
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
    initial_load_path: str = opt(
        "", "Weights to start from when there is no checkpoint to resume: a Hugging Face model "
        "folder (config.json + safetensors; the model's shape then comes from its config.json "
        "and model.flavor is ignored) or one of our step-N folders (model weights only)."
    )
    initial_load_format: str = opt(
        "hf", "Format of initial_load_path: hf (Hugging Face safetensors) or dcp (ours).",
        choices=("hf", "dcp"),
    )
    last_save_in_hf: bool = opt(
        False, "At the end of the run also write the policy as a Hugging Face folder "
        "(<folder>/step-N-hf: config.json, safetensors shards + index, tokenizer and generation "
        "config) and a learnable drafter next to it (step-N-hf-drafter)."
    )
    export_dtype: str = opt(
        "float32", "dtype of the Hugging Face export.", choices=("float32", "bfloat16", "float16")
    )
    export_shard_mib: int = opt(4096, "Largest safetensors shard of the export, in MiB.")
    preempt_grace_s: int = opt(
        300, "After SIGTERM / SIGUSR1 (a preemption) the ranks finish the current step, save it "
        "and exit 75; run_train.sh gives them this many seconds before it kills them."
    )


@dataclass
class Quantize:
    backend: str = opt(
        "none", "FP8 GEMMs in the transformer blocks' linear layers (parallel/fp8.py): none, or "
        "emulated (float8 e4m3 operands with float32 scales multiplied in float32, what "
        "torch._scaled_mm computes; runs anywhere, for tests and CPU runs). Transformer Engine "
        "and torchao backends are not built yet.", choices=("none", "emulated"),
    )
    learner_recipe: str = opt(
        "rowwise", "Scaling of the learner's FP8 GEMMs: rowwise (a scale per token row and per "
        "weight output channel) or tensorwise (one per tensor, from its current amax).",
        choices=("rowwise", "tensorwise"),
    )
    verifier_recipe: str = opt(
        "rowwise", "Scaling of the verifier's, the logprob recompute's and the rollout model's "
        "FP8 GEMMs. Must be row-local (rowwise), so that a row's probabilities do not depend on "
        "the other rows or drafts and speculation stays exact; tensorwise is refused.",
        choices=("rowwise", "tensorwise"),
    )
    keep_high_precision: list = opt(
        ["tok_embeddings", "output", "router"], "Module names kept out of FP8 (matched against "
        "each part of a module's path); the grouped MoE experts are never converted."
    )


@dataclass
class Comm:
    timeout_s: int = opt(
        600, "Longest wait of one collective or point-to-point call (and of process-group "
        "start-up) before the rank fails with a timeout instead of hanging; raise it for "
        "steps that keep some ranks waiting longer (large async jobs)."
    )


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
    async_rl: AsyncRL = field(default_factory=AsyncRL)
    drafter: Drafter = field(default_factory=Drafter)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    quantize: Quantize = field(default_factory=Quantize)
    comm: Comm = field(default_factory=Comm)
    metrics: Metrics = field(default_factory=Metrics)


# Table name -> its dataclass, in file order (the loader's and the reference's view).
TABLES: dict[str, type] = {f.name: f.default_factory for f in fields(JobConfig)}
