"""Training-time test (EAGLE-3): the head trained on its own multi-step predictions.

Step 0 is the teacher-forced step: at every position t the head reads fc(features of x_{t-1})
and e(x_t) and learns the target's distribution of x_{t+1}. Step s > 0 continues the draft
chain that started at t: it reads the head's own step s-1 output there and e(x_{t+s}) at
position t+s, attends to the true context (step 0's keys at positions <= t) and to its own
chain (steps 1..s at index t), as drafting does with its KV cache, and learns the target's
distribution of x_{t+s+1}. Losses are soft cross-entropies against the target's distribution
restricted to the draft vocabulary, step s weighted by decay**s. With steps = 1 this is plain
distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from titan_spec.data.sft import SFTDataSource
from titan_spec.models.eagle3 import frequent_tokens, set_draft_vocab

from .distill import fit, soft_cross_entropy


def _shift_left(x: torch.Tensor, by: int) -> torch.Tensor:
    """x[:, t + by] at t (zeros past the end)."""
    if by == 0:
        return x
    return torch.cat([x[:, by:], torch.zeros_like(x[:, :by])], dim=1)


def chain_attention(q, keys: list, values: list) -> torch.Tensor:
    """q [B, T, H, D]; keys / values: step 0's [B, T, Hkv, D] (causal over positions) then each
    later step's (the same index only) -> [B, T, H * D]."""
    batch, seq, heads, dim = q.shape
    repeat = heads // keys[0].shape[2]
    widen = lambda t: t.repeat_interleave(repeat, dim=2)  # noqa: E731
    scale = dim ** -0.5
    main = torch.einsum("bthd,bshd->bhts", q, widen(keys[0])) * scale
    causal = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    main = main.masked_fill(~causal, float("-inf"))
    chain = [(q * widen(k)).sum(-1).transpose(1, 2).unsqueeze(-1) * scale for k in keys[1:]]
    weights = torch.softmax(torch.cat([main, *chain], dim=-1).float(), dim=-1).to(q.dtype)
    out = torch.einsum("bhts,bshd->bthd", weights[..., :seq], widen(values[0]))
    for index, v in enumerate(values[1:]):
        out = out + weights[..., seq + index].transpose(1, 2).unsqueeze(-1) * widen(v)
    return out.reshape(batch, seq, heads * dim)


def ttt_outputs(head, inputs, features, embed, steps: int) -> list[torch.Tensor]:
    """The head's outputs [B, T, dim] for steps 0..steps-1 (step s at index t = chain start)."""
    positions = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    embeds = embed(inputs).detach().to(head.fc.weight.dtype)
    previous = torch.cat([torch.zeros_like(features[:, :1]), features[:, :-1]], dim=1)
    hidden = head.project(previous)
    block, keys, values, outputs = head.block, [], [], []
    for step in range(steps):
        position = positions + step
        cos, sin = head.rope_cos[position], head.rope_sin[position]
        fused = torch.cat([block.input_norm(_shift_left(embeds, step)),
                           block.hidden_norm(hidden)], dim=-1)
        q, k, v = block.attention.project(fused, cos, sin)
        keys.append(k)
        values.append(v)
        x = hidden + block.attention.wo(chain_attention(q, keys, values))
        hidden = x + block.feed_forward(block.ffn_norm(x))
        outputs.append(hidden)
    return outputs


def ttt_loss(head, inputs, mask, target_probs, features, embed, steps: int = 3,
             decay: float = 0.8, normaliser=None) -> torch.Tensor:
    """inputs [B, T], mask [B, T] (positions whose next token is learned), target_probs
    [B, T, V] and features [B, T, 3 x target_dim] from the target's forward, without
    gradient."""
    draft_targets = head.to_draft_vocab(target_probs.detach().float())
    denominator = mask.sum() if normaliser is None else normaliser
    total, weights = 0.0, 0.0
    for step, output in enumerate(ttt_outputs(head, inputs, features.detach(), embed, steps)):
        step_mask = _shift_left(mask, step)
        logits = head.draft_logits(output)
        loss = soft_cross_entropy(_shift_left(draft_targets, step), logits, step_mask,
                                  logits.shape[-1], 1.0)
        total = total + decay**step * loss
        weights += decay**step
    return total / weights / denominator


def choose_draft_vocab(head, data, batches: int = 16) -> None:
    """The head's draft vocabulary: the most frequent tokens of the task's training text (the
    public recipes' choice), counted over `batches` batches past the ones distillation uses."""
    tokens = torch.cat([data.global_batch(10**6 + i).inputs.flatten() for i in range(batches)])
    set_draft_vocab(head, frequent_tokens(tokens, head.shape.draft_vocab_size,
                                          head.args.vocab_size))


def distill_eagle3(target, head, task, tokenizer, steps: int, ttt_steps: int = 3,
                   batch_size: int = 32, seq_len: int = 96, lr: float = 3e-3, seed: int = 0,
                   log=None) -> list:
    """Teacher-forced training of an EAGLE-3 head on the task, with `ttt_steps` of
    training-time test (1: plain distillation)."""
    data = SFTDataSource(task, tokenizer, batch_size, seq_len, seed=seed + 104729)
    vocab, device = tokenizer.vocab_size, head.fc.weight.device
    target.eval()
    if head.shape.draft_vocab_size < head.args.vocab_size:
        choose_draft_vocab(head, data)

    def loss_at(step):
        batch = data.global_batch(step)
        inputs, mask = batch.inputs.to(device), batch.mask.to(device)
        with torch.no_grad():
            logits, features = target(inputs, return_hidden=True,
                                      hidden_layers=head.shape.aux_layers)
            target_probs = F.softmax(logits[..., :vocab].float(), dim=-1)
        return ttt_loss(head, inputs, mask, target_probs, features, target.tok_embeddings,
                        ttt_steps)

    return fit(head, steps, lr, loss_at, log, f"distil EAGLE-3 head (TTT {ttt_steps})")
