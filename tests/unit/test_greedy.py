import torch

from titan_spec.models import build_model
from titan_spec.rollout.greedy import greedy_decode


def _naive(model, prompt, steps, eos_id, vocab_size):
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids]))[0, -1, :vocab_size].argmax())
        ids.append(nxt)
        if nxt == eos_id:
            break
    out = ids[len(prompt):]
    return out[: out.index(eos_id)] if eos_id in out else out


def test_greedy_decode_matches_recomputing_full_forward():
    model = build_model("qwen3", "debug", seed=2).eval()
    prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 3, 3, 3, 3, 4]]
    # eos=20 occurs for some rows within 12 steps of this random model, others run to the limit.
    got = greedy_decode(model, prompts, 12, stop_ids=20, pad_id=0, device="cpu", vocab_size=54)
    assert got == [_naive(model, p, 12, 20, 54) for p in prompts]
