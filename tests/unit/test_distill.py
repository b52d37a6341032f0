from titan_spec.data.tokenizer import CharTokenizer
from titan_spec.drafters.distill import distill_draft_model, distill_eagle_head, distill_heads
from titan_spec.models import build_model
from titan_spec.models.heads import build_draft_head
from titan_spec.rl.tasks import build_task


def test_distillation_learns_and_never_touches_the_target():
    target = build_model("qwen3", "debug", seed=0)
    task, tok = build_task("arithmetic", max_digits=2), CharTokenizer()
    draft = build_model("qwen3", "debug", seed=1, n_layers=1)
    # A random target is close to uniform, so soft cross-entropy floors at its entropy (~3.5):
    # learning shows as a clear drop towards it, not as a ratio.
    losses = distill_draft_model(target, draft, task, tok, steps=30, batch_size=8, seq_len=48)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    head = build_draft_head(target.args, seed=2)
    losses = distill_eagle_head(target, head, task, tok, steps=30, batch_size=8, seq_len=48)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    heads = [build_draft_head(target.args, seed=s) for s in (3, 4)]
    losses = distill_heads(target, heads, task, tok, steps=30, batch_size=8, seq_len=48)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    assert all(p.grad is None for p in target.parameters())
