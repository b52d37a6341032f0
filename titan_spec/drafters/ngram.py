"""N-gram drafter: prompt lookup plus a suffix index over sibling rollouts of the same GRPO
prompt group and over recent completions of the same prompt. No model and no draft
distribution (draft_probs None: the acceptance rule treats the draft as one-hot).

GRPO samples G completions per prompt and RL revisits prompts across steps, so siblings and
earlier answers share long spans (the worked steps of a solution): a cheap, strong drafter."""

from __future__ import annotations

from collections import defaultdict, deque

import torch

from .base import Drafter, DraftRequest


def find_continuation(pattern: list[int], source: list[int], k: int):
    """Tokens after the LAST occurrence of `pattern` in `source` that has at least one token
    after it (up to k). In a sequence's own context the pattern's final occurrence is its own
    tail, which has nothing after it, so it is skipped by construction."""
    n = len(pattern)
    for start in range(len(source) - n - 1, -1, -1):
        if source[start:start + n] == pattern:
            return source[start + n:start + n + k]
    return []


class NgramDrafter(Drafter):
    name = "ngram"

    def __init__(self, max_ngram: int = 4, min_ngram: int = 1, history_per_prompt: int = 16):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram ({min_ngram}) <= max_ngram ({max_ngram}).")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.history: dict = defaultdict(lambda: deque(maxlen=history_per_prompt))
        self._prompt_len: dict[int, int] = {}

    def prefill(self, slots, prompts):
        for slot, prompt in zip(slots, prompts, strict=True):
            self._prompt_len[slot] = len(prompt)

    def _sources(self, row: int, request: DraftRequest, by_group: dict):
        """Token lists in preference order: siblings, history, own context."""
        own = request.sequences[row]
        group = request.group_ids[row]
        prompt = tuple(own[: self._prompt_len[request.slots[row]]])
        siblings = [request.sequences[i] for i in by_group.get(group, ()) if i != row]
        return siblings + list(self.history[prompt]) + [own]

    def _propose_row(self, row: int, request: DraftRequest, by_group: dict) -> list[int]:
        context = request.sequences[row]
        sources = self._sources(row, request, by_group)
        for n in range(min(self.max_ngram, len(context)), self.min_ngram - 1, -1):
            pattern = context[-n:]
            for source in sources:
                found = find_continuation(pattern, source, request.k)
                if found:
                    return found
        return []

    def propose(self, request: DraftRequest):
        by_group: dict = defaultdict(list)
        for row, group in enumerate(request.group_ids):
            if group is not None:
                by_group[group].append(row)
        rows = []
        for row in range(len(request.sequences)):
            tokens = self._propose_row(row, request, by_group)
            # Every row drafts k tokens; padding by repeating the last token is still a valid
            # deterministic draft (lossless either way), it only costs verify compute.
            fill = tokens[-1] if tokens else request.sequences[row][-1]
            rows.append(tokens + [fill] * (request.k - len(tokens)))
        return torch.tensor(rows, dtype=torch.long, device=request.device), None

    def finish(self, slot, tokens, group_id):
        prompt_len = self._prompt_len.pop(slot)
        self.history[tuple(tokens[:prompt_len])].append(list(tokens))
