"""A Hugging Face decoder's static-cache forward, the function ``generate()`` compiles: shared by the
graph-break and CUDA-graph tests."""

from __future__ import annotations

import torch
from transformers import StaticCache


def static_step(model, max_len: int = 32):
    """``step(ids, pos) -> logits`` of ``model`` (a QuantizedModel or HF model) through one
    StaticCache of ``max_len`` positions."""
    hf = model._modules["model"] if hasattr(model, "program") else model
    cache = StaticCache(config=hf.config, max_cache_len=max_len)

    def step(ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # past_key_values: the name transformers < 5.20 knows too (later ones map it to cache).
        return hf(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True).logits

    step.cache = cache
    return step


def prompt_then_token(device="cpu", batch: int = 1, seq: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (batch, seq + 1), generator=g).to(device)
    return (ids[:, :seq], torch.arange(seq, device=device)), (ids[:, seq:], torch.tensor([seq], device=device))
