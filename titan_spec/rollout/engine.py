"""RolloutEngine: prefill, then the speculative loop with continuous batching.

Each iteration, for every running sequence: the drafter proposes k tokens; ONE target forward
scores the pending last token plus the k drafts (k+1 positions, KV cache at per-sequence
offsets); rejection_sample keeps a prefix (token or block verification) and adds one token;
the cache rewinds for free (position-masked). A finished sequence's slot takes the next prompt
at once. The only host synchronisation per iteration is reading the emitted tokens for the
stop checks.

Random numbers are counter-based, keyed by (seed, the prompt's index, tokens committed,
stream): a request draws the same numbers alone or in any batch, and one iteration's numbers
come from one call (or from inside the CUDA kernels).

With vocab_shard (a tensor-parallel target), each tp rank computes and verifies only its
columns of the logits, and every rank emits the single-rank tokens (kernels/vocab_shard.py).

With drafter=None (or k=0) the same loop is the plain KV-cache sampler: the bonus draw from the
target's processed distribution."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from titan_spec.kernels.counter_rng import RandomKeys
from titan_spec.kernels.rejection_reference import RULES
from titan_spec.kernels.rejection_sampler import rejection_sample
from titan_spec.kernels.vocab_shard import VocabShard

from .adaptive import AdaptiveK
from .draft_length import DraftLengths, drafted_lengths
from .draft_request import DraftRequest
from .engine_stats import count_against_plain, count_verify, finish_stats, new_stats
from .kv_cache import KVCache, compute_dtype, prefill_batch
from .sampling import SamplingParams, process_logits


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # behaviour logprobs: target's processed distribution
    stats: dict = field(default_factory=dict)


@dataclass
class _Sequence:
    index: int
    tokens: list[int]  # prompt + generated
    prompt_len: int
    group_id: object
    request_id: int  # its key in the counter-based random streams
    draft_budget: int = 0  # the most it drafts next iteration (per-sequence schedule)
    logprobs: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=lambda: {"drafted": 0, "accepted": 0, "verify_steps": 0})
    finish_reason: str | None = None

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len


class RolloutEngine:
    def __init__(self, model, drafter=None, num_draft_tokens: int = 4, max_batch_size: int = 8,
                 max_seq_len: int = 512, vocab_size: int | None = None,
                 adaptive: "bool | AdaptiveK" = False, verify: str = "token",
                 vocab_shard: VocabShard | None = None,
                 draft_lengths: DraftLengths | None = None):
        if num_draft_tokens < 0:
            raise ValueError(f"num_draft_tokens={num_draft_tokens} must be >= 0.")
        if max_seq_len > model.args.max_seq_len:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the model's RoPE range "
                             f"{model.args.max_seq_len}; lower it.")
        if verify not in RULES:
            raise ValueError(f"verify={verify!r}: choose one of {', '.join(RULES)}.")
        self.model, self.drafter, self.verify = model, drafter, verify
        self.num_draft_tokens = num_draft_tokens if drafter is not None else 0
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        # Draft length per sequence (rollout/draft_length.py); constant: the iteration's k.
        self.draft_lengths = draft_lengths or DraftLengths()
        self.vocab_size = vocab_size or model.args.vocab_size
        # Adaptive: choose k in [0, num_draft_tokens] per iteration (rollout/adaptive.py); an
        # AdaptiveK instance carries its measurements over from earlier engines.
        if isinstance(adaptive, AdaptiveK):
            self.adaptive_k = adaptive if drafter else None
        else:
            self.adaptive_k = AdaptiveK(self.num_draft_tokens) if adaptive and drafter else None
        self.device = model.rope_cos.device
        # Vocabulary-parallel verification (tensor-parallel targets): this rank computes and
        # verifies only its shard's logit columns (kernels/vocab_shard.py).
        self.vocab_shard = vocab_shard or VocabShard.whole(self.vocab_size)
        self.output_head = None
        if not self.vocab_shard.is_whole:
            rows = model.output.weight[self.vocab_shard.start:self.vocab_shard.stop]
            self.output_head = lambda hidden: torch.nn.functional.linear(hidden.to(rows.dtype),
                                                                         rows)
        # EAGLE-style drafters read the target's final hidden states (EAGLE-3: the outputs of
        # three layers side by side), kept per slot and position.
        self.needs_hidden = bool(getattr(drafter, "needs_target_hidden", False))
        self.hidden_layers = getattr(drafter, "target_hidden_layers", None)
        self.hidden: torch.Tensor | None = None
        self.last_stats: dict = {}

    # ---------------------------------------------------------------- public API
    @torch.no_grad()
    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams,
                 group_ids: list | None = None,
                 between_iterations: Callable[[], None] | None = None,
                 request_ids: list[int] | None = None) -> list[Completion]:
        """between_iterations: called between decode iterations; it may update the target's
        and drafter's weights in place (async RL's in-flight updates). Tokens already in the
        KV cache stay; each new token is still sampled exactly from the current target.
        request_ids: each prompt's key in the random streams (default: its index), so a
        request given the same id and seed gets the same tokens in any batch."""
        self._check_prompts(prompt_token_ids, group_ids, request_ids)
        if request_ids is None:
            request_ids = list(range(len(prompt_token_ids)))
        base_seed = sampling.seed if sampling.seed is not None else int(
            torch.randint(0, 2**62, (1,)))
        queue = deque(range(len(prompt_token_ids)))
        slots: list[_Sequence | None] = [None] * self.max_batch_size
        results: list[Completion | None] = [None] * len(prompt_token_ids)
        dtype = compute_dtype(self.model)
        self.cache = KVCache.for_model(self.model, self.max_batch_size, self.max_seq_len,
                                       dtype=dtype, device=self.device)
        if self.needs_hidden:
            width = self.model.args.dim * len(self.hidden_layers or (None,))
            self.hidden = torch.zeros((self.max_batch_size, self.max_seq_len, width),
                                      dtype=dtype, device=self.device)
        if self.drafter is not None:
            self.drafter.start(self.max_batch_size, self.max_seq_len, self.device)
        stats = new_stats(self.num_draft_tokens, self.cache.nbytes())
        start = time.perf_counter()
        try:
            while queue or any(slots):
                if between_iterations is not None and stats["iterations"]:
                    between_iterations()
                self._admit(queue, slots, prompt_token_ids, group_ids, request_ids)
                active = [i for i, seq in enumerate(slots) if seq is not None]
                self._step(active, slots, sampling, base_seed, stats)
                for slot in active:
                    seq = slots[slot]
                    if seq.finish_reason is not None:
                        results[seq.index] = self._complete(seq)
                        if self.drafter is not None:
                            self.drafter.finish(slot, seq.tokens, seq.group_id)
                        slots[slot] = None
        finally:
            if self.drafter is not None:
                self.drafter.stop()
            self.cache = self.hidden = None
        self.last_stats = finish_stats(stats, time.perf_counter() - start)
        return results

    # ---------------------------------------------------------------- internals
    def _check_prompts(self, prompts, group_ids, request_ids):
        for name, values in (("group_ids", group_ids), ("request_ids", request_ids)):
            if values is not None and len(values) != len(prompts):
                raise ValueError(f"{name} has {len(values)} entries for {len(prompts)} prompts.")
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token.")
            if len(prompt) >= self.max_seq_len:
                raise ValueError(f"prompt {i} has {len(prompt)} tokens, max_seq_len is "
                                 f"{self.max_seq_len}; raise max_seq_len or shorten it.")
            if max(prompt) >= self.vocab_size or min(prompt) < 0:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.vocab_size}).")

    def _admit(self, queue, slots, prompts, group_ids, request_ids):
        free = [i for i, seq in enumerate(slots) if seq is None]
        new_slots, new_prompts = [], []
        for slot in free:
            if not queue:
                break
            index = queue.popleft()
            prompt = list(prompts[index])
            group = group_ids[index] if group_ids is not None else None
            slots[slot] = _Sequence(index, prompt, len(prompt), group, request_ids[index],
                                    draft_budget=self.num_draft_tokens)
            new_slots.append(slot)
            new_prompts.append(prompt)
        if new_slots:
            self._prefill(new_slots, new_prompts)
            if self.needs_hidden:
                self.drafter.prefill(new_slots, new_prompts, hidden=self.hidden)
            elif self.drafter is not None:
                self.drafter.prefill(new_slots, new_prompts)

    def _prefill(self, slots: list[int], prompts: list[list[int]]):
        """Cache every prompt token but the last, which the first verify step feeds."""
        batch = prefill_batch(prompts, self.device)
        if batch is not None:
            tokens, positions = batch
            self._forward(tokens, positions, slots, tokens.shape[1])

    def _forward(self, tokens, positions, slots: list[int], attend_len):
        """Target forward on the cache; keeps final hidden states when a drafter reads them."""
        view = self.cache.view(slots, attend_len)
        if not self.needs_hidden:
            return self.model(tokens, positions, kv_cache=view, output_head=self.output_head)
        logits, hidden = self.model(tokens, positions, kv_cache=view, return_hidden=True,
                                    hidden_layers=self.hidden_layers,
                                    output_head=self.output_head)
        self.hidden[view.slots.unsqueeze(1), positions] = hidden.to(self.hidden.dtype)
        return logits

    def _choose_k(self, sequences: list[_Sequence]) -> int:
        adaptive = self.adaptive_k
        k = self.num_draft_tokens if adaptive is None else adaptive.choose(len(sequences))
        if self.draft_lengths.budgeted:
            k = min(k, max(s.draft_budget for s in sequences))
        room = min(self.max_seq_len - len(s.tokens) for s in sequences)
        return max(0, min(k, room))

    def _draft(self, active, sequences, k, sampling, keys):
        if k == 0:
            return torch.zeros((len(active), 0), dtype=torch.long, device=self.device), None
        request = DraftRequest(
            slots=active, sequences=[s.tokens for s in sequences],
            group_ids=[s.group_id for s in sequences], k=k, sampling=sampling,
            keys=keys, vocab_size=self.vocab_size,
            device=self.device, extras={"hidden": self.hidden},
            limits=([min(k, s.draft_budget) for s in sequences]
                    if self.draft_lengths.budgeted else None),
            confidence=self.draft_lengths.confidence)
        return self.drafter.propose(request)

    def _step(self, active, slots, sampling, base_seed, stats):
        sequences = [slots[i] for i in active]
        k = self._choose_k(sequences)
        keys = RandomKeys.of(base_seed, [s.request_id for s in sequences],
                             [len(s.tokens) for s in sequences], self.device)
        t0 = time.perf_counter()
        draft_ids, draft_probs = self._draft(active, sequences, k, sampling, keys)
        k = draft_ids.shape[1]  # every row may have stopped early
        drafted = (drafted_lengths(draft_ids, draft_probs).tolist()
                   if self.draft_lengths.per_sequence else [k] * len(sequences))
        t1 = time.perf_counter()
        lengths = torch.tensor([len(s.tokens) for s in sequences], device=self.device)
        last = torch.tensor([s.tokens[-1] for s in sequences], device=self.device)
        inputs = torch.cat([last.unsqueeze(1), draft_ids], dim=1)  # [B, k+1]
        positions = (lengths - 1).unsqueeze(1) + torch.arange(k + 1, device=self.device)
        logits = self._forward(inputs, positions, active,
                               max(len(s.tokens) for s in sequences) + k)
        shard = self.vocab_shard
        target_probs = process_logits(logits[..., : shard.size], sampling, shard=shard)
        if draft_probs is not None:  # [B, k, V] -> this shard's columns
            draft_probs = draft_probs[..., shard.start:shard.stop]
        emitted = rejection_sample(draft_ids, draft_probs, target_probs, rule=self.verify,
                                   keys=keys, shard=shard)
        logprobs = shard.at(target_probs, emitted.clamp(min=0)).log()
        emitted_rows, logprob_rows = emitted.tolist(), logprobs.tolist()  # the one host sync
        t2 = time.perf_counter()
        stats["time_draft_s"] += t1 - t0
        stats["time_verify_s"] += t2 - t1
        stats["iterations"] += 1
        stats["sequence_steps"] += len(sequences)
        tokens_before = stats["tokens"]
        for seq, tokens, token_logprobs, length in zip(sequences, emitted_rows, logprob_rows,
                                                       drafted, strict=True):
            self._commit(seq, tokens, token_logprobs, length, sampling, stats)
        if self.adaptive_k is not None:
            count_against_plain(stats, self.adaptive_k.plain_time(len(sequences)),
                                len(sequences), stats["tokens"] - tokens_before, t2 - t0)
            self.adaptive_k.observe(len(sequences), k, t1 - t0, t2 - t1, emitted_rows, drafted)

    def _commit(self, seq, tokens, token_logprobs, drafted, sampling, stats):
        """drafted: this row's draft length (<= the iteration's k)."""
        num_accepted = next((i for i, t in enumerate(tokens) if t < 0), len(tokens)) - 1
        seq.draft_budget = self.draft_lengths.next_budget(seq.draft_budget, drafted,
                                                          num_accepted, self.num_draft_tokens)
        count_verify(stats, len(seq.tokens), drafted, num_accepted)
        seq.stats["drafted"] += drafted
        seq.stats["accepted"] += num_accepted
        seq.stats["verify_steps"] += 1
        for token, logprob in zip(tokens, token_logprobs, strict=True):
            if token < 0:
                break
            seq.tokens.append(token)
            seq.logprobs.append(logprob)
            stats["tokens"] += 1
            if token in sampling.stop_token_ids:
                seq.finish_reason = "stop"
            elif seq.generated >= sampling.max_new_tokens or len(seq.tokens) >= self.max_seq_len:
                seq.finish_reason = "length"
            if seq.finish_reason:
                break

    def _complete(self, seq: _Sequence) -> Completion:
        stats = dict(seq.stats, finish_reason=seq.finish_reason)
        return Completion(seq.tokens[seq.prompt_len:], seq.logprobs, stats)
