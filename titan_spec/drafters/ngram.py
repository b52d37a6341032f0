"""N-gram drafter: prompt lookup plus a suffix index over sibling rollouts of the same GRPO
prompt group and over recent completions of the same prompt. No model and no draft
distribution (draft_probs None: the acceptance rule treats the draft as one-hot).

GRPO samples G completions per prompt and RL revisits prompts across steps, so siblings and
earlier answers share long spans (the worked steps of a solution): a cheap, strong drafter.
Each sequence keeps an incremental index from every n-gram (n <= max_ngram) to its two latest
start positions, so a lookup is a dict access, not a scan: drafting must stay cheap next to a
decode step, or the adaptive policy's probes alone would cost more than they find."""

from __future__ import annotations

from collections import defaultdict, deque

import torch

from .base import Drafter, DraftRequest


class NgramIndex:
    """n-gram -> (latest start, previous start) over a growing token list."""

    def __init__(self, max_ngram: int):
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self.starts: dict[tuple, tuple] = {}
        self.indexed = 0  # tokens[:indexed] are in the index

    def extend(self, tokens: list[int]) -> "NgramIndex":
        """Index the tokens appended since the last call (`tokens` only ever grows)."""
        self.tokens = tokens
        for end in range(self.indexed + 1, len(tokens) + 1):
            for n in range(1, min(self.max_ngram, end) + 1):
                key = tuple(tokens[end - n:end])
                latest = self.starts.get(key)
                self.starts[key] = (end - n, latest[0] if latest else None)
        self.indexed = len(tokens)
        return self

    def continuation(self, pattern: tuple, k: int) -> list[int]:
        """Up to k tokens after the latest occurrence of `pattern` that has a token after it
        (a sequence's own tail is the pattern itself, with nothing after it)."""
        for start in self.starts.get(pattern, ()):
            if start is not None and start + len(pattern) < len(self.tokens):
                return self.tokens[start + len(pattern):start + len(pattern) + k]
        return []


def find_continuation(pattern: list[int], source: list[int], k: int) -> list[int]:
    """One-off lookup in a plain token list (builds a throwaway index)."""
    return NgramIndex(len(pattern)).extend(source).continuation(tuple(pattern), k)


class NgramDrafter(Drafter):
    name = "ngram"

    def __init__(self, max_ngram: int = 4, min_ngram: int = 1, history_per_prompt: int = 16):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram ({min_ngram}) <= max_ngram ({max_ngram}).")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.history: dict = defaultdict(lambda: deque(maxlen=history_per_prompt))
        self._prompt_len: dict[int, int] = {}
        self._index: dict[int, NgramIndex] = {}

    def prefill(self, slots, prompts):
        for slot, prompt in zip(slots, prompts, strict=True):
            self._prompt_len[slot] = len(prompt)
            self._index[slot] = NgramIndex(self.max_ngram)

    def _sources(self, row: int, request: DraftRequest, by_group: dict) -> list[NgramIndex]:
        """Indices in preference order: siblings, recent completions of the prompt, own."""
        slot, group = request.slots[row], request.group_ids[row]
        prompt = tuple(request.sequences[row][: self._prompt_len[slot]])
        siblings = [self._index[request.slots[i]] for i in by_group.get(group, ()) if i != row]
        return siblings + list(reversed(self.history[prompt])) + [self._index[slot]]

    def _propose_row(self, row: int, request: DraftRequest, by_group: dict) -> list[int]:
        context = request.sequences[row]
        sources = self._sources(row, request, by_group)
        for n in range(min(self.max_ngram, len(context)), self.min_ngram - 1, -1):
            pattern = tuple(context[-n:])
            for source in sources:
                found = source.continuation(pattern, request.k)
                if found:
                    return found
        return []

    def propose(self, request: DraftRequest):
        by_group: dict = defaultdict(list)
        for row, (slot, group) in enumerate(zip(request.slots, request.group_ids, strict=True)):
            self._index[slot].extend(request.sequences[row])
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
        index = self._index.pop(slot).extend(tokens)
        self.history[tuple(tokens[:prompt_len])].append(index)
