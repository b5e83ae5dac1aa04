"""The lean loop's next-token choice against transformers' own logits warpers and processors."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (MinNewTokensLengthLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from qcompiler.runtime.next_token import TokenChoice, choose_next_token, warp_logits


def _hf_warp(scores, temperature, top_k, top_p):
    ids = torch.zeros(scores.shape[0], 1, dtype=torch.long)
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return scores


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8), (1.3, 40, 0.9),
                                                     (1.0, 300, 0.5), (0.5, 1, 1.0)])
def test_warpers_equal_transformers(temperature, top_k, top_p):
    scores = torch.randn(4, 257, generator=torch.Generator().manual_seed(0)) * 3
    scores[1, :10] = scores[1, 10]  # ties at the top-k / top-p boundary
    choice = TokenChoice(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    ours = warp_logits(scores.clone(), choice)
    ref = _hf_warp(scores.clone(), temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)], rtol=0, atol=0)


def test_min_new_tokens_masks_eos_like_transformers():
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    eos = torch.tensor([4, 9])
    for generated in (0, 2, 3, 5):
        prompt = 7
        ids = torch.zeros(3, prompt + generated, dtype=torch.long)
        ref = MinNewTokensLengthLogitsProcessor(prompt, 3, eos)(ids, scores.clone())
        ours = choose_next_token(scores.clone(), TokenChoice(), torch.tensor([generated]), torch.tensor([3]), eos)
        assert torch.equal(ours, ref.argmax(-1)), generated


def test_sampling_draws_from_the_warped_distribution():
    # argmax(p / E) with E ~ Exp(1) is a sample of p: empirical frequencies within 5 sigma of p,
    # and nothing outside the top-k set.
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 40000
    choice = TokenChoice(do_sample=True, temperature=0.8, top_k=4)
    picks = choose_next_token(logits.expand(n, -1).clone(), choice, torch.zeros(1, dtype=torch.long),
                              torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    probs = torch.softmax(_hf_warp(logits[None].clone(), 0.8, 4, 1.0), -1)[0]
    freq = torch.bincount(picks, minlength=6).double() / n
    sigma = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert (freq[4:] == 0).all()
    assert ((freq - probs.double()).abs() <= 5 * sigma + 1e-12).all(), (freq, probs)


def test_top_k_one_sampling_is_greedy():
    scores = torch.randn(5, 100, generator=torch.Generator().manual_seed(2))
    z = torch.zeros(1, dtype=torch.long)
    picks = choose_next_token(scores, TokenChoice(do_sample=True, top_k=1), z, z, torch.zeros(0, dtype=torch.long))
    assert torch.equal(picks, scores.argmax(-1))
