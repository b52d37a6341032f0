"""The sampling transform: softmax values, the top-k / top-p supports as defined (ties at the
boundary kept together), greedy one-hot, padded ids at zero, and a normaliser that does not
depend on the order of the columns; logprobs computed in chunks of rows equal to the whole."""

import pytest
import torch

from titan_spec.rollout.sampling import SamplingParams, process_logits, token_logprobs


def test_plain_temperature_is_the_softmax():
    logits = torch.randn(4, 3, 50, generator=torch.Generator().manual_seed(0)) * 3
    probs = process_logits(logits, SamplingParams(temperature=0.7))
    torch.testing.assert_close(probs, torch.softmax(logits / 0.7, dim=-1), rtol=1e-6, atol=1e-7)


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass_and_its_ties():
    # Descending masses 0.4, 0.2, 0.2, 0.1, 0.1: top_p 0.5 reaches the mass at the second token,
    # whose tie (the third) stays; top_p 0.4 reaches it at the first.
    logits = torch.tensor([0.4, 0.2, 0.1, 0.2, 0.1]).log()
    kept_05 = process_logits(logits, SamplingParams(top_p=0.5)) > 0
    kept_04 = process_logits(logits, SamplingParams(top_p=0.4)) > 0
    assert kept_05.tolist() == [True, True, False, True, False]
    assert kept_04.tolist() == [True, False, False, False, False]
    torch.testing.assert_close(process_logits(logits, SamplingParams(top_p=0.5))[0],
                               torch.tensor(0.5))


def test_top_k_greedy_and_padding():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 9.0]])
    top_k = process_logits(logits, SamplingParams(top_k=2), vocab_size=4)
    assert (top_k > 0).tolist() == [[True, False, True, True, False]]  # tie at the k-th stays
    greedy = process_logits(logits, SamplingParams(temperature=0), vocab_size=4)
    assert greedy.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]


def test_probabilities_do_not_depend_on_the_column_order():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 1000, generator=generator) * 5
    order = torch.randperm(1000, generator=generator)
    for sampling in (SamplingParams(), SamplingParams(top_p=0.9, temperature=1.5)):
        probs = process_logits(logits, sampling)
        assert torch.equal(process_logits(logits[:, order], sampling), probs[:, order])


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0.7),
                                      SamplingParams(temperature=1.0, top_k=5),
                                      SamplingParams(temperature=1.0, top_p=0.8)])
def test_chunked_token_logprobs_equal_the_whole_bit_for_bit(sampling):
    """Chunks of rows (recomputed in backward) give the unchunked values and gradients."""
    torch.manual_seed(0)
    logits = torch.randn(3, 50, 70, requires_grad=True)
    ids = torch.randint(0, 64, (3, 50))
    weights = torch.arange(150.0).view(3, 50)
    grads = []
    for chunk_elements in (10 ** 9, 700):  # one chunk; 10 rows a chunk
        values = token_logprobs(logits, ids, sampling, 64, chunk_elements=chunk_elements)
        (values * weights).sum().backward()
        grads.append((values.detach(), logits.grad.clone()))
        logits.grad = None
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_chunked_drafter_loss_equals_the_whole(monkeypatch):
    from titan_spec.drafters import distill

    torch.manual_seed(0)
    target = torch.softmax(torch.randn(2, 40, 64), -1)
    mask = (torch.rand(2, 40) > 0.3).float()
    logits = torch.randn(2, 40, 70, requires_grad=True)
    results = []
    for chunk_elements in (10 ** 9, 300):
        monkeypatch.setitem(distill.by_row_chunks.__kwdefaults__, "chunk_elements",
                            chunk_elements)
        loss = distill.soft_cross_entropy(target, logits, mask, 64)
        loss.backward()
        results.append((loss.detach(), logits.grad.clone()))
        logits.grad = None
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
