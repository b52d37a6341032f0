"""One RL step, plain and speculative: per-stage seconds, sync or async, optionally calibrated
to a measured plain run. The stages are those of the published stage table (data, weight sync,
generation, logprob recompute, training) plus the drafter's own online training."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from tools.simulate.costs import Shape, learner_pass_s, target_shape
from tools.simulate.generation import Drafter, decode_s, in_flight_position, response_lengths
from tools.simulate.hardware import Hardware
from tools.simulate.workload import Workload

GIB = 2.0 ** 30


def drafter_shape(work: Workload) -> Shape | None:
    """What one draft step reads and computes. eagle / mtp: one decoder layer of the target's
    width with the fc that fuses (2 or, for eagle3, 3) hidden states, and an LM head over the
    (draft) vocabulary; draft_model: its own layers and width, the target's vocabulary;
    ngram: nothing on the device."""
    if work.drafter in ("none", "ngram"):
        return None
    args = work.model
    dim = (work.draft_dim or args.dim) if work.drafter == "draft_model" else args.dim
    scale = dim / args.dim
    attention = dim * args.head_dim * (2 * args.n_heads + 2 * args.n_kv_heads) * scale
    mlp = 3 * dim * args.hidden_dim * scale
    layers = max(1, work.draft_layers)
    vocab = args.vocab_size
    if work.drafter == "eagle3" and work.draft_vocab:
        vocab = work.draft_vocab
    fuse = {"eagle3": 3, "eagle": 2, "mtp": 2}.get(work.drafter, 0) * dim * dim
    params = layers * (attention + mlp) + fuse + dim * vocab
    kv_heads_dim = args.n_kv_heads * args.head_dim * scale
    return Shape(n_layers=layers, dense_params=params, expert_params=0.0, num_experts=0,
                 top_k=0, active_params=params,
                 attn_flops_per_ctx=4.0 * layers * args.n_heads * args.head_dim * scale,
                 kv_bytes_per_token=2.0 * layers * kv_heads_dim * work.dtype_bytes,
                 kv_split_max=args.n_kv_heads, dim=int(dim), vocab=vocab)


def rollout_layout(work: Workload, hw: Hardware) -> dict:
    """Replicas, sequences per replica and decode slots (max_batch_size, or fewer when the KV
    cache does not hold that many sequences at their length-biased mean length)."""
    devices = work.rollout_gpus if work.mode == "async" else work.gpus
    if devices < work.rollout_tp or devices % work.rollout_tp:
        raise ValueError(f"{devices} rollout devices do not split into replicas of "
                         f"rollout_tp = {work.rollout_tp}; --set gpus / rollout_gpus / rollout_tp.")
    replicas = devices // work.rollout_tp
    per_replica = math.ceil(work.sequences / replicas)
    shape = target_shape(work.model, work.dtype_bytes)
    weights = work.model.num_params() * work.dtype_bytes / work.rollout_tp
    free = hw.memory_gib * GIB * work.kv_memory_fraction - weights
    if free <= 0:
        raise ValueError(f"the rollout weights ({weights / GIB:.1f} GiB per device at "
                         f"rollout_tp = {work.rollout_tp}) do not fit {hw.memory_gib} GiB; "
                         f"raise rollout_tp.")
    kv_per_token = shape.kv_bytes_per_token / min(work.rollout_tp, shape.kv_split_max)
    lengths = _lengths(work, per_replica)
    in_flight = in_flight_position(lengths, work.prompt_len)
    by_memory = max(1, int(free / kv_per_token / in_flight))
    slots = min(work.max_batch_size, by_memory, per_replica)
    return {"replicas": replicas, "sequences_per_replica": per_replica, "slots": slots,
            "slots_kv_limit": by_memory, "lengths": lengths}


def _lengths(work: Workload, count: int) -> np.ndarray:
    return response_lengths(count, work.mean_response, work.response_sigma, work.response_max)


def generation_s(work: Workload, hw: Hardware) -> dict:
    """Prefill + decode seconds of one replica (all replicas alike). Async RL overlaps it with
    training but, as in titan-spec's rollout workers, a step's batch still ends with its
    longest response (no sequence carries over into the next step's batch)."""
    layout = rollout_layout(work, hw)
    target = target_shape(work.model, work.dtype_bytes)
    draft_shape = drafter_shape(work) if work.speculative() else None
    drafter = Drafter(work.k if work.speculative() else 0,
                      work.accept_length if work.speculative() else 1.0, draft_shape)
    lengths, slots, tp = layout.pop("lengths"), layout["slots"], work.rollout_tp
    decode = decode_s(lengths, slots=slots, prompt_len=work.prompt_len, drafter=drafter,
                      target=target, hw=hw, tp=tp, dtype_bytes=work.dtype_bytes)
    prompt_tokens = layout["sequences_per_replica"] * work.prompt_len
    prefill_params = target.active_params + (draft_shape.active_params if draft_shape else 0.0)
    prefill = 2.0 * prefill_params * prompt_tokens / (tp * hw.flops * hw.prefill_mfu)
    return {**layout, "prefill_s": prefill, "decode_s": decode["decode_s"],
            "iterations": decode["iterations"], "mean_batch": decode["mean_batch"],
            "generation_s": prefill + decode["decode_s"]}


def learner_s(work: Workload, hw: Hardware, speculative: bool) -> dict:
    """Logprob recompute, training, and the drafter's online training, on the learner's
    devices (all of them in sync RL)."""
    devices = work.gpus - work.rollout_gpus if work.mode == "async" else work.gpus
    if devices < 1:
        raise ValueError(f"no learner devices: gpus = {work.gpus}, rollout_gpus = "
                         f"{work.rollout_gpus}.")
    shape = target_shape(work.model, work.dtype_bytes)
    response = float(_lengths(work, work.sequences).mean())  # as generated: cut at the max
    length = work.prompt_len + response
    tokens = work.sequences * length
    common = dict(tokens=tokens, mean_context=length, devices=devices,
                  dtype_bytes=work.dtype_bytes)
    out = {"logprob_s": learner_pass_s(shape, hw, backward=False, recompute=False, **common),
           "train_s": learner_pass_s(shape, hw, backward=True,
                                     recompute=work.activation_checkpoint, **common),
           "drafter_s": 0.0}
    draft = drafter_shape(work)
    if speculative and work.online_drafter and draft is not None:
        out["drafter_s"] = learner_pass_s(draft, hw, backward=True, recompute=False,
                                          tokens=work.sequences * response,
                                          mean_context=length, devices=devices)
    return out


def weight_sync_s(work: Workload, hw: Hardware) -> float:
    """Async: the sharded sync (each rollout device receives its 1/rollout_tp slice, each
    learner device sends its shard to every replica) at the network bandwidth; sync RL
    verifies with the learner's own shards, so nothing moves."""
    if work.mode != "async":
        return 0.0
    model_bytes = work.model.num_params() * work.dtype_bytes
    replicas = work.rollout_gpus // work.rollout_tp
    received = model_bytes / work.rollout_tp
    sent = model_bytes / (work.gpus - work.rollout_gpus) * replicas
    return max(received, sent) / (hw.net_gb_s * 1e9)


def one_step(work: Workload, hw: Hardware, speculative: bool) -> dict:
    arm = work if speculative else work.plain()
    gen = generation_s(arm, hw)
    stages = {"data_s": 0.0, "weight_sync_s": weight_sync_s(arm, hw),
              "generation_s": gen["generation_s"], **learner_s(arm, hw, speculative)}
    return {"stages": stages, "rollout": {k: v for k, v in gen.items() if k != "generation_s"}}


def step_time(stages: dict, work: Workload) -> float:
    learner = stages["logprob_s"] + stages["train_s"] + stages["drafter_s"]
    if work.mode == "async" and work.policy_lag >= 1:  # the two meshes overlap
        return stages["data_s"] + stages["weight_sync_s"] + max(stages["generation_s"], learner)
    return sum(stages.values())


def measured_scales(work: Workload, hw: Hardware) -> dict:
    """Calibration from a measured plain run of `work` (its measured_* fields). Generation:
    a measured time above the simulated one is host and framework time the roofline does not
    see, charged to every layer of every forward alike (target and drafter, plain or
    speculative: `layer_overhead_s`, as an eager stack spends it per operator); one below it
    scales generation down. The learner: the factor that makes logprob + train
    equal the measured ones. The rest of the measured step (data, scoring, gathers): added
    unchanged. Nothing given: no change."""
    first = one_step(work.plain(), hw, False)
    plain = first["stages"]
    scales = {"layer_overhead_s": 0.0, "generation_scale": 1.0, "learner_scale": 1.0,
              "other_s": 0.0}
    if work.measured_generation_s:
        gap = work.measured_generation_s - plain["generation_s"]
        if gap > 0:
            layer_forwards = max(1, first["rollout"]["iterations"]) * work.model.n_layers
            scales["layer_overhead_s"] = gap / layer_forwards
        else:
            scales["generation_scale"] = work.measured_generation_s / plain["generation_s"]
        plain["generation_s"] = work.measured_generation_s
    measured_learner = work.measured_logprob_s + work.measured_train_s
    if measured_learner:
        scales["learner_scale"] = measured_learner / (plain["logprob_s"] + plain["train_s"])
    if work.measured_step_s:
        apply_scales(plain, {**scales, "generation_scale": 1.0})
        rest = work.measured_step_s - step_time(plain, work)
        if rest < 0 and not measured_learner:  # the learner is faster than the profile says
            learner = plain["logprob_s"] + plain["train_s"]
            scales["learner_scale"] *= 1.0 + rest / learner
            apply_scales(plain, {**scales, "generation_scale": 1.0,
                                 "learner_scale": 1.0 + rest / learner})
            rest = work.measured_step_s - step_time(plain, work)
        if scales["learner_scale"] <= 0 or rest < -1e-9 * work.measured_step_s:
            raise ValueError(f"measured_step_s = {work.measured_step_s} is less than the stages "
                             f"it must hold (generation {plain['generation_s']:.4g} s); check "
                             f"the measured_* values.")
        scales["other_s"] = max(0.0, rest)
    return scales


def apply_scales(stages: dict, scales: dict) -> None:
    stages["generation_s"] *= scales["generation_scale"]
    for key in ("logprob_s", "train_s", "drafter_s"):
        stages[key] *= scales["learner_scale"]
    stages["data_s"] += scales["other_s"]


def best_split(work: Workload, hw: Hardware, speculative: bool) -> int:
    """The rollout share (in sixteenths of the job, whole replicas) that gives this arm its
    shortest step."""
    best, best_s = 0, float("inf")
    for sixteenth in range(1, 16):
        devices = work.gpus * sixteenth // 16 // work.rollout_tp * work.rollout_tp
        if devices < work.rollout_tp or devices >= work.gpus:
            continue
        trial = replace(work, rollout_gpus=devices)
        arm = one_step(trial, hw, speculative)
        seconds = step_time(arm["stages"], trial)
        if seconds < best_s:
            best, best_s = devices, seconds
    if not best:
        raise ValueError(f"gpus = {work.gpus} leaves no split into rollout replicas of "
                         f"rollout_tp = {work.rollout_tp} and learner devices.")
    return best


def simulate(work: Workload, hw: Hardware, scales: dict | None = None) -> dict:
    """The plain and speculative step side by side, and the speed-ups. Async with
    rollout_gpus = 0 takes the split that is best for the speculative arm, for both arms;
    async also reports the speed-up over plain synchronous RL on the same devices (the
    published 235B projection's baseline: speculation and asynchrony combined). `scales`
    (from `measured_scales` of another layout) calibrate it; by default its own measured_*
    fields do."""
    speculative, base_hw = work.speculative(), hw
    measured = work.measured_generation_s or work.measured_step_s or work.measured_train_s
    if work.mode == "async" and not work.rollout_gpus and measured and scales is None:
        raise ValueError("measured_* values describe one layout: set rollout_gpus to the "
                         "measured run's (0 picks a split, which they do not describe).")
    if work.mode == "async" and not work.rollout_gpus:
        work = replace(work, rollout_gpus=best_split(work, hw, speculative))
    applied = measured_scales(work, hw) if scales is None else scales
    hw = hw.with_values(layer_overhead_s=hw.layer_overhead_s + applied["layer_overhead_s"])
    plain, spec = one_step(work, hw, False), one_step(work, hw, speculative)
    apply_scales(plain["stages"], applied)
    apply_scales(spec["stages"], applied)
    for arm in (plain, spec):
        arm["step_s"] = step_time(arm["stages"], work)
        arm["rollout"]["rollout_gpus"] = work.rollout_gpus
    extra = {}
    if work.mode == "async":
        sync_plain = simulate(replace(work, mode="sync", rollout_gpus=0).plain(), base_hw,
                              applied)["plain"]
        extra = {"sync_plain_step_s": sync_plain["step_s"],
                 "speedup_vs_sync_plain": sync_plain["step_s"] / spec["step_s"]}
    return {
        "mode": work.mode, "hardware": hw.name, **extra,
        "generation_speedup": plain["stages"]["generation_s"] / spec["stages"]["generation_s"],
        "step_speedup": plain["step_s"] / spec["step_s"],
        "acceptance_length": work.accept_length if speculative else 1.0,
        "per_position_acceptance": work.per_position_acceptance() if speculative else [],
        "plain": plain, "speculative": spec, "calibration": applied,
    }
