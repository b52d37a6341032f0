"""The config tables of the RL side: the task, the SFT warm start, GRPO, async RL, rollout
sampling and the drafter. Per-kind settings live in sub-tables ([task.jsonl],
[drafter.draft_model]); the loader refuses a sub-table that does not apply to the chosen kind."""

from __future__ import annotations

from dataclasses import dataclass, field

from .options import opt


@dataclass
class Arithmetic:
    min_digits: int = opt(1, "Smallest operand length.")
    max_digits: int = opt(3, "Largest operand length.")


@dataclass
class NumberList:
    min_items: int = opt(3, "Fewest numbers per problem.")
    max_items: int = opt(4, "Most numbers per problem.")


@dataclass
class Jsonl:
    path: str = opt(
        "", "File with one {\"prompt\": ..., \"answer\": ...} object per line (\"solution\" "
        "too for SFT)."
    )
    on_bad_line: str = opt(
        "error", "A malformed line (bad JSON, not UTF-8, missing fields) stops the run (error) "
        "or is skipped and counted (skip).",
        choices=("error", "skip"),
    )
    heldout_fraction: float = opt(
        0.1, "Share of the lines held out for evaluation (chosen by a hash of each prompt: the "
        "same split on every rank, run and line order); training never draws them. 0 evaluates "
        "on the training lines."
    )


@dataclass
class Task:
    name: str = opt(
        "arithmetic", "Verifiable task (rl/tasks registry): arithmetic, countdown, sorting "
        "(generated on the fly) or jsonl (a dataset file); its settings are [task.<name>]."
    )
    arithmetic: Arithmetic = field(default_factory=Arithmetic,
                                   metadata={"help": "Column-by-column addition."})
    countdown: NumberList = field(default_factory=NumberList,
                                  metadata={"help": "Reach a target with + - * over the numbers."})
    sorting: NumberList = field(default_factory=NumberList,
                                metadata={"help": "Sort the numbers."})
    jsonl: Jsonl = field(default_factory=Jsonl, metadata={"help": "A dataset file."})
    chat_template: bool = opt(
        False, "Wrap each prompt as one user turn of the tokenizer's chat template "
        "(tokenizer_config.json or chat_template.jinja), generation prompt included."
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
    rollout_is: str = opt(
        "none", "Correction of the rollout-vs-learner mismatch by per-token importance weights "
        "pi_learner / pi_behaviour at every lag (rl/rollout_is.py): none (weight 1 at lag 0; "
        "lagged async samples keep async_rl.is_cap), tis (truncated at rollout_is_cap) or mis "
        "(masked: tokens whose ratio leaves [rollout_is_floor, rollout_is_cap] leave the loss).",
        choices=("none", "tis", "mis"),
    )
    rollout_is_cap: float = opt(
        2.0, "Upper bound of the importance weight under rollout_is = tis | mis.")
    rollout_is_floor: float = opt(
        0.5, "Lower bound of the ratio under rollout_is = mis (below it the token is masked).")


@dataclass
class AsyncRL:
    rollout_ranks: int = opt(
        0, "Ranks of the separate rollout mesh, taken from the end of the world; 0 keeps "
        "rollouts colocated with the learner (synchronous RL)."
    )
    rollout_tp: int = opt(
        1, "Tensor-parallel degree of each rollout replica (replicas = rollout_ranks / "
        "rollout_tp); it splits heads, SwiGLU columns and every MoE expert's columns."
    )
    max_policy_lag: int = opt(
        1, "Batch s is generated with policy version s - 1 - max_policy_lag, so the learner "
        "trains on samples at most this many versions old (0: no overlap)."
    )
    is_cap: float = opt(
        2.0, "Truncation of the per-token importance weight pi_learner / pi_behaviour for "
        "lagged samples (truncated IS)."
    )
    stale_batches: str = opt(
        "wait", "Batches older than max_policy_lag: the rollout side waits for the version "
        "each batch needs, so none arise (wait); or it never waits for weights, generating "
        "with the newest it has received, and the learner drops groups that arrive too old "
        "(drop).", choices=("wait", "drop"),
    )
    inflight_weight_updates: bool = opt(
        False, "With stale_batches=drop: also take new weights between decode iterations, "
        "mid-batch (tokens already in the KV cache stay; each later token is sampled from the "
        "new weights). A batch counts as the version it started from."
    )
    weight_sync: str = opt(
        "sharded", "How the policy reaches the rollout mesh after a step: every learner rank "
        "sends its own shard's parts, cast to the rollout dtype, straight to the rollout ranks "
        "that hold them, so each receives only its slice (sharded); or every learner rank "
        "gathers each full fp32 parameter and the first broadcasts the whole model to every "
        "rollout rank (gather).", choices=("sharded", "gather"),
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
    vocab_parallel: bool = opt(
        True, "Under tensor parallelism (parallelism.tp, async_rl.rollout_tp), each tp rank "
        "computes and verifies only its share of the logit columns, reducing over tp (exact: "
        "the same tokens as one rank); false: every tp rank computes the whole LM head."
    )


@dataclass
class DraftModel:
    flavor: str = opt("debug", "Model flavor of the draft model (same vocabulary as the policy).")
    layers: int = opt(1, "Decoder layers of the draft model (0: the flavor's own count).")


@dataclass
class Mtp:
    num_heads: int = opt(2, "Prediction heads, one per draft depth.")


@dataclass
class Eagle3:
    aux_layers: str = opt(
        "", "The three target layers (0-based, comma-separated) whose outputs the head fuses; "
        "empty: the public recipes' 1, L/2-1, L-4 (spread over the depth for targets under 8 "
        "layers). A published head's config.json overrides it."
    )
    draft_vocab_size: int = opt(
        0, "Draft vocabulary: the N most frequent tokens of the task's training text, chosen "
        "before the warm-up distillation; 0: the whole vocabulary."
    )
    ttt_steps: int = opt(
        3, "Training-time test steps in distillation and online adaptation: the head also "
        "trains on its own predictions this many steps deep (1: plain teacher forcing)."
    )


@dataclass
class Drafter:
    kind: str = opt(
        "eagle", "Speculative drafter: none (plain sampling), ngram, draft_model, eagle, eagle3 "
        "or mtp.",
        choices=("none", "ngram", "draft_model", "eagle", "eagle3", "mtp"),
    )
    num_draft_tokens: int = opt(4, "Tokens drafted per verify step (k).")
    verify: str = opt(
        "token", "Verification rule, both lossless: token (accept drafts one by one, stop at "
        "the first rejection) or block (Sun et al., ICLR 2025: judge the drafted block as a "
        "whole, which keeps at least as many tokens in expectation).",
        choices=("token", "block"),
    )
    adaptive: bool = opt(
        False, "Choose k in [0, num_draft_tokens] each iteration from measured costs and "
        "acceptance (tp=1 only: ranks would choose differently)."
    )
    schedule: str = opt(
        "constant", "Draft length per sequence: constant (every sequence drafts the "
        "iteration's k) or heuristic (each sequence's own budget: +2 after a draft accepted "
        "whole, -1 after a rejection, between 1 and num_draft_tokens, starting at "
        "num_draft_tokens; transformers' assistant schedule). Lossless either way.",
        choices=("constant", "heuristic"),
    )
    confidence_threshold: float = opt(
        0.0, "Stop a sequence's draft after a drafted token whose draft probability is below "
        "this (draft_model, eagle, eagle3, mtp; transformers' assistant uses 0.4); 0 drafts "
        "every position. Lossless: the draft length is part of the draft."
    )
    distill_steps: int = opt(
        200, "Distillation steps of the drafter on the task after SFT, before RL (skipped "
        "when the checkpoint already holds a drafter, or with init_from); also the steps of "
        "tools/distill_drafter.py."
    )
    init_from: str = opt(
        "", "An already trained drafter of this kind, replacing the warm-up distillation: the "
        "--out file of tools/distill_drafter.py, a Hugging Face model folder (draft_model: a "
        "small Qwen3 with the policy's tokenizer; eagle3: a published EAGLE-3 head, e.g. one "
        "for Qwen3-8B) or an exported step-N-hf-drafter folder."
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
    draft_model: DraftModel = field(default_factory=DraftModel,
                                    metadata={"help": "kind = draft_model: a small causal LM."})
    mtp: Mtp = field(default_factory=Mtp, metadata={"help": "kind = mtp: one head per depth."})
    eagle3: Eagle3 = field(default_factory=Eagle3,
                           metadata={"help": "kind = eagle3: fused three-layer features."})
