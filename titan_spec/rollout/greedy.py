"""Greedy KV-cache decoding for evaluation. Every rank calls the model the same number of times
(FSDP2 and TP forwards are collectives), so the loop stops only when all ranks are done."""

from __future__ import annotations

import torch
import torch.distributed as dist

from titan_spec import comm

from .kv_cache import KVCache, compute_dtype


@torch.no_grad()
def greedy_decode(model, prompts: list[list[int]], max_new_tokens: int, stop_ids, pad_id: int,
                  device, vocab_size: int, tp_degree: int = 1, group=None) -> list[list[int]]:
    """Left-aligned prompts of any lengths -> generated ids (without the prompt, up to the
    first of `stop_ids`, an int or a tuple: EOS and the generation config's stop tokens).
    Only the tokenizer's `vocab_size` ids are candidates: the model's padded rows never are."""
    batch = len(prompts)
    stop_ids = (stop_ids,) if isinstance(stop_ids, int) else tuple(stop_ids)
    stops = torch.tensor(stop_ids, device=device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    # Ranks hold different prompts but must run the same number of forwards (each one is a
    # collective under FSDP2 / TP): agree on the prefill length and the loop bound.
    start = _agree(int(lengths.min()), dist.ReduceOp.MIN, device, group)
    longest = _agree(int(lengths.max()), dist.ReduceOp.MAX, device, group)
    max_len = longest + max_new_tokens
    tokens = torch.full((batch, max_len), pad_id, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt, device=device)
    cache = KVCache.for_model(model, batch, max_len, tp_degree=tp_degree, device=device,
                              dtype=compute_dtype(model))
    # Prefill the common prefix length; shorter prompts feed their remaining prompt tokens
    # one by one below (positions are per row, so rows move in lockstep).
    positions = torch.arange(start, device=device).expand(batch, start)
    logits = model(tokens[:, :start], positions, kv_cache=cache)[:, -1]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for pos in range(start, max_len):
        next_ids = logits[:, :vocab_size].argmax(-1)
        in_prompt = pos < lengths
        next_ids = torch.where(in_prompt, tokens[:, pos], next_ids)
        next_ids = torch.where(finished, torch.full_like(next_ids, pad_id), next_ids)
        tokens[:, pos] = next_ids
        stopped = torch.isin(next_ids, stops)
        finished |= ~in_prompt & (stopped | (pos + 1 - lengths >= max_new_tokens))
        if _all_done(finished, group) or pos == max_len - 1:
            break
        logits = model(next_ids[:, None], torch.full((batch, 1), pos, device=device),
                       kv_cache=cache)[:, -1]
    out = []
    for row in range(batch):
        generated = tokens[row, len(prompts[row]):][:max_new_tokens].tolist()
        end = next((i for i, token in enumerate(generated) if token in stop_ids), len(generated))
        out.append(generated[:end])
    return out


def _agree(value: int, op, device, group=None) -> int:
    if not dist.is_initialized():
        return value
    tensor = torch.tensor(value, device=device)
    comm.all_reduce(tensor, op=op, group=group)
    return int(tensor)


def _all_done(finished: torch.Tensor, group=None) -> bool:
    done = finished.all().to(torch.int32)
    if dist.is_initialized():
        comm.all_reduce(done, op=dist.ReduceOp.MIN, group=group)
    return bool(done)
