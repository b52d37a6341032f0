import torch

from titan_spec.drafters.base import DraftRequest
from titan_spec.drafters.ngram import NgramDrafter, find_continuation
from titan_spec.kernels.counter_rng import RandomKeys
from titan_spec.rollout.sampling import SamplingParams


def test_find_continuation_takes_the_last_occurrence():
    assert find_continuation([1, 2], [1, 2, 3, 9, 1, 2, 4, 5], k=2) == [4, 5]
    assert find_continuation([7], [1, 2, 3], k=2) == []
    # the pattern's own final occurrence has no continuation; an overlapping one does
    assert find_continuation([2, 3], [2, 3, 8, 2, 3], k=1) == [8]
    assert find_continuation([5, 5], [5, 5, 5], k=2) == [5]


def _request(sequences, group_ids, k=3):
    return DraftRequest(slots=list(range(len(sequences))), sequences=sequences,
                        group_ids=group_ids, k=k, sampling=SamplingParams(),
                        keys=RandomKeys.of(0, range(len(sequences)), [0] * len(sequences)),
                        vocab_size=64, device=torch.device("cpu"))


def test_prompt_lookup_and_siblings_and_history():
    drafter = NgramDrafter(max_ngram=3)
    prompt = [1, 5, 6, 7]
    drafter.prefill([0, 1, 2], [prompt, prompt, [1, 9, 9]])
    sibling = prompt + [10, 11, 12, 13, 14]
    me = prompt + [10, 11]
    other = [1, 9, 9, 4, 9, 9]
    ids, probs = drafter.propose(_request([me, sibling, other], ["g", "g", None]))
    assert probs is None
    assert ids[0].tolist() == [12, 13, 14]  # from the sibling in the same group
    assert ids[2].tolist() == [4, 9, 9]  # prompt lookup in its own context
    drafter.finish(1, sibling, "g")
    drafter.prefill([1], [prompt])
    ids, _ = drafter.propose(_request([prompt + [10], prompt], ["h", "h"]))
    assert ids[0].tolist() == [11, 12, 13]  # from the finished completion of the same prompt
