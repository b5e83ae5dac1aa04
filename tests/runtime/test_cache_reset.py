"""``reset_cache`` leaves a used cache exactly as transformers' own ``reset()`` does, for static,
sliding-window and encoder-decoder caches, and zeroes the extra tensors it is given."""

from __future__ import annotations

import copy

import pytest
import torch

from qcompiler.runtime import cache_reset
from qcompiler.runtime.cache_reset import reset_cache


def _state(obj) -> dict:
    """Every tensor and int attribute reachable through the cache's layers, by path."""
    out = {}
    for layer_i, layer in enumerate(getattr(obj, "layers", [])):
        for name, value in vars(layer).items():
            if isinstance(value, (torch.Tensor, int)):
                out[f"{layer_i}.{name}"] = value.clone() if isinstance(value, torch.Tensor) else value
    for name in ("self_attention_cache", "cross_attention_cache"):
        if hasattr(obj, name):
            out.update({f"{name}.{k}": v for k, v in _state(getattr(obj, name)).items()})
    if hasattr(obj, "is_updated"):
        out["is_updated"] = dict(obj.is_updated)
    return out


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def _used_static_cache(model, cache_len=24):
    from transformers import StaticCache
    cache = StaticCache(config=model.config, max_cache_len=cache_len)
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    import inspect
    kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **{kwarg: cache})
    return cache


@pytest.mark.parametrize("kind", ["llama", "mistral-sliding"])
def test_static_caches_end_as_transformers_resets_them(kind, make_tiny_hf, monkeypatch):
    if kind == "llama":
        model = make_tiny_hf("llama")
    else:
        from transformers import MistralConfig, MistralForCausalLM
        torch.manual_seed(0)
        model = MistralForCausalLM(MistralConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                 sliding_window=8)).eval()
    cache = _used_static_cache(model)
    assert any(bool(layer.keys.abs().sum()) for layer in cache.layers)  # the forward wrote it
    theirs = copy.deepcopy(cache)
    theirs.reset()
    calls = []
    real = torch._foreach_zero_
    monkeypatch.setattr(torch, "_foreach_zero_", lambda ts: (calls.append(len(ts)), real(ts)))
    counter = torch.tensor([5, 6])
    reset_cache(cache, also_zero=(counter,))
    assert _same(_state(cache), _state(theirs))
    assert torch.equal(counter, torch.zeros(2, dtype=counter.dtype))
    if kind == "llama":  # the few-launch path: keys, values and lengths zeroed together
        assert sum(calls) == 1 + 3 * len(cache.layers)
    else:  # sliding-window layers override reset(): theirs ran (the state check above), only the counter here
        assert sum(calls) == 1


def test_other_caches_use_their_own_reset():
    from transformers import DynamicCache, EncoderDecoderCache
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    k = torch.randn(1, 2, 3, 4)
    cache.self_attention_cache.update(k, k, 0)
    cache.cross_attention_cache.update(k, k, 0)
    cache.is_updated[0] = True
    theirs = copy.deepcopy(cache)
    theirs.reset()
    reset_cache(cache)
    assert _same(_state(cache), _state(theirs)) and cache.is_updated[0] is False


def test_the_base_reset_it_reproduces_is_still_transformers(monkeypatch):
    # If transformers changes which reset its static layers use, the fast path must step aside.
    from transformers.cache_utils import StaticLayer
    cache_reset_fn, layer_reset_fn = cache_reset._base_resets()
    assert StaticLayer.reset is layer_reset_fn
    seen = []
    monkeypatch.setattr(StaticLayer, "reset", lambda self: seen.append(self))
    from transformers import LlamaConfig, StaticCache
    cache = StaticCache(config=LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=3,
                                           intermediate_size=64, vocab_size=64), max_cache_len=8)
    reset_cache(cache)
    assert len(seen) == 3  # an overridden layer reset is called, not reproduced
