"""The sampling transform: softmax values, the top-k / top-p supports as defined (ties at the
boundary kept together), greedy one-hot, padded ids at zero, and a normaliser that does not
depend on the order of the columns."""

import torch

from titan_spec.rollout.sampling import SamplingParams, process_logits


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
