"""Rollout: the speculative engine (prefill, draft -> verify -> rejection sample, continuous
batching), its KV cache, the one logits -> probabilities transform, adaptive k, greedy eval.

    from titan_spec.rollout import RolloutEngine, SamplingParams, Completion
"""

from .adaptive import AdaptiveK
from .draft_request import DraftRequest
from .engine import Completion, RolloutEngine
from .sampling import SamplingParams, process_logits, token_logprobs

__all__ = ["AdaptiveK", "Completion", "DraftRequest", "RolloutEngine", "SamplingParams",
           "process_logits", "token_logprobs"]
