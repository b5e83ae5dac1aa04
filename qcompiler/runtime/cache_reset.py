"""Resetting a static KV cache (and a slot's counters) in a few launches instead of three per layer.

transformers' ``StaticCache.reset()`` calls each layer's ``reset()``, which zeroes the layer's keys,
values and its ``cumulative_length`` tensor one by one: 3 kernel launches a layer, 96 for a 32-layer
model, each ~5-10 us of host time on the GPU. The lean loop resets its cache before every prompt
(a captured prompt graph reads the cache's length from ``cumulative_length``, and stale keys that
are not finite would reach the decode step's masked attention as ``0 * nan``), so that host time
sits in every ``generate()`` call. :func:`reset_cache` zeroes the same tensors with
``torch._foreach_zero_`` (a handful of launches for all of them) where the cache and its layers
use transformers' base ``reset`` - whose effect it reproduces, checked against it in
``tests/runtime/test_cache_reset.py`` - and calls ``reset()`` for any other layer or cache.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["reset_cache"]


def _base_resets():
    from transformers.cache_utils import Cache, CacheLayerMixin
    return Cache.reset, CacheLayerMixin.reset


def reset_cache(cache, also_zero: Iterable[torch.Tensor] = ()) -> None:
    """``cache.reset()``, then ``t.zero_()`` for each of ``also_zero``, in as few launches as the
    tensors' dtypes allow."""
    cache_reset, layer_reset = _base_resets()
    zeros = list(also_zero)
    if type(cache).reset is not cache_reset:  # an encoder-decoder or other cache: its own reset
        cache.reset()
    else:
        for layer in cache.layers:
            if type(layer).reset is not layer_reset:
                layer.reset()
                continue
            if layer.is_initialized:
                zeros += [layer.keys, layer.values]
            if hasattr(layer, "cumulative_length"):
                if isinstance(layer.cumulative_length, int):
                    layer.cumulative_length = 0
                else:
                    zeros.append(layer.cumulative_length)
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for t in zeros:
        by_kind.setdefault((t.device, t.dtype), []).append(t)
    for group in by_kind.values():
        torch._foreach_zero_(group)
