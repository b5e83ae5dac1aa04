"""Choosing the next token from the logits, as Hugging Face ``generate()`` does, in tensor ops only.

:class:`TokenChoice` is the part of a generation config the lean decode loop
(:mod:`qcompiler.runtime.decode_loop`) supports: greedy or sampling with temperature, top-k and
top-p, a minimum number of new tokens before end-of-sequence, and the end-of-sequence / padding
ids. :func:`choose_next_token` applies it with no host synchronisation and no data-dependent
Python, so it can sit inside a captured CUDA graph: the minimum-length rule reads the step count
from a device tensor, and sampling draws ``argmax(p / E)`` with ``E ~ Exp(1)`` (an exact sample of
``p``, the way gpt-fast does it) instead of ``torch.multinomial``.

The warpers follow transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
``TopPLogitsWarper`` (same order, same ties, ``min_tokens_to_keep=1``); ``tests/runtime`` compares
them with transformers' own classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TokenChoice", "warp_logits", "choose_next_token"]


@dataclass(frozen=True)
class TokenChoice:
    """How each next token is picked. ``top_k=0`` and ``top_p=1.0`` switch those filters off;
    ``eos`` may be empty (then generation runs ``max_new_tokens`` and nothing is padded)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos: tuple[int, ...] = ()
    pad: int = 0

    def describe(self) -> str:
        if not self.do_sample:
            return "greedy"
        parts = [f"temperature={self.temperature:g}"] if self.temperature != 1.0 else []
        parts += [f"top_k={self.top_k}"] if self.top_k else []
        parts += [f"top_p={self.top_p:g}"] if self.top_p < 1.0 else []
        return "sampling" + (f" ({', '.join(parts)})" if parts else "")


def warp_logits(scores: torch.Tensor, choice: TokenChoice) -> torch.Tensor:
    """``scores`` [batch, vocab] float32 after temperature, top-k and top-p (filtered entries -inf),
    as transformers' warpers leave them. Only used when sampling."""
    if choice.temperature != 1.0:
        scores = scores / choice.temperature
    if choice.top_k:
        k = min(choice.top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if choice.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - choice.top_p)
        drop_sorted[..., -1:] = False  # keep at least the most likely token
        drop = drop_sorted.scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def choose_next_token(logits: torch.Tensor, choice: TokenChoice, generated: torch.Tensor,
                      min_new: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """The next token of each row, [batch] int64, from ``logits`` [batch, vocab] (any float dtype).

    ``generated``: device int64 [1], tokens generated so far; ``min_new``: device int64 [1]; while
    ``generated < min_new`` the end-of-sequence ids (``eos``, device int64 [n], may be empty) get
    -inf, as transformers' ``MinNewTokensLengthLogitsProcessor`` does."""
    scores = logits.float()
    if eos.numel():
        block = torch.where(generated < min_new, float("-inf"), 0.0).to(scores.dtype)  # [1]
        scores = scores.index_add(1, eos, block.expand(scores.shape[0], eos.numel()))
    if not choice.do_sample:
        return torch.argmax(scores, dim=-1)
    probs = torch.softmax(warp_logits(scores, choice), dim=-1)
    # argmax(p / E), E ~ Exp(1): a sample of p without multinomial's host-side checks.
    return torch.argmax(probs / torch.empty_like(probs).exponential_(1), dim=-1)
