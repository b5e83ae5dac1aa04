"""Prompt forwards replayed as CUDA graphs, one per prompt shape that repeats.

A compiled prompt still costs host time per call: Dynamo's guards, Inductor's Python wrapper
launching ~200 kernels, and each qcompiler op's Python and Triton launch (~0.15 ms a quantized
linear under the profiler). At 2048 tokens of the TinyLlama shape that host time is larger than
the GPU time (H200: 16.1 ms wall for 3.35 ms of kernels, w4-weight-only, 8 layers;
``benchmarks/profile_prefill.py``). :class:`PromptGraphs` captures the lean loop's compiled,
unpadded prompt forward of one shape ``[batch, length]`` the second time that shape runs, and
replays it from then on: one launch, the same kernels on the same buffers.

On by default (``DecodeLoopConfig(prompt_graphs=2)``; ``0`` turns it off). Measured on an H200
(2026-12-03, ``benchmarks/profile_prefill.py --shape 1.1b --layers 8 --decode-first``, 2048 tokens,
the same next token in every mode): fp16 7.90 -> 6.02 ms, w4-weight-only 10.71 -> 5.23 ms for
3.10 / 3.36 ms of kernels; ``tests/runtime/test_prompt_graph.py``'s GPU tests passed there.

* Only the fast path's compiled prompt is captured (Inductor's code has no host syncs; the plain
  forward's mask code reads the positions on the host), only unpadded prompts (the causal
  attention of :mod:`qcompiler.runtime.prompt_attention`: no mask tensor), only on CUDA, only
  once the static cache has allocated its tensors.
* A shape runs once uncaptured first, so one-off prompt lengths never pay for a capture; a slot
  keeps ``limit`` captured shapes (the oldest is dropped), each holding its activations in its own
  memory pool.
* Capturing warms up on a side stream first (compiles, autotunes the kernels for this shape), as
  the decode step's capture does. Should a capture fail, a warning says why and prompts run
  uncaptured from then on (:attr:`PromptGraphs.failure`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["PromptGraphs"]


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    ids: torch.Tensor  # static inputs the graph reads
    pos: torch.Tensor
    logits: torch.Tensor  # the graph's output, rewritten by each replay


def _cache_allocated(cache) -> bool:
    return all(getattr(layer, "is_initialized", True) for layer in getattr(cache, "layers", ()))


class PromptGraphs:
    """Captured prompt forwards of one static cache, by prompt shape."""

    def __init__(self, limit: int):
        self.limit = limit
        self.graphs: "OrderedDict[tuple, _Captured]" = OrderedDict()
        self.seen: dict[tuple, int] = {}
        self.failure: Optional[str] = None

    def run(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ids: torch.Tensor,
            pos: torch.Tensor, cache) -> Optional[torch.Tensor]:
        """The prompt's logits from a replayed graph, or None when this call should run the forward
        itself (first sight of the shape, capturing off or failed). ``forward(ids, pos)`` is the
        prompt's forward into ``cache`` (reset by the caller), returning logits."""
        if self.limit <= 0 or self.failure is not None or ids.device.type != "cuda":
            return None
        key = tuple(ids.shape)
        entry = self.graphs.get(key)
        if entry is None:
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] < 2 or not _cache_allocated(cache):
                return None
            entry = self._capture(forward, ids, pos, cache)
            if entry is None:
                return None
            self.graphs[key] = entry
            while len(self.graphs) > self.limit:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        entry.ids.copy_(ids)
        entry.pos.copy_(pos)
        entry.graph.replay()
        return entry.logits

    def _capture(self, forward, ids, pos, cache) -> Optional[_Captured]:
        static_ids, static_pos = ids.clone(), pos.clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                forward(static_ids, static_pos)  # warm-up: compiles and autotunes for this shape
            torch.cuda.current_stream().wait_stream(side)
            cache.reset()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = forward(static_ids, static_pos)
            return _Captured(graph, static_ids, static_pos, logits)
        except Exception as e:  # noqa: BLE001 - generate() must keep working: fall back, say so
            self.failure = f"{type(e).__name__}: {str(e)[:300]}"
            warnings.warn(f"qcompiler decode loop: capturing the prompt's forward failed, prompts run uncaptured "
                          f"from now on: {self.failure}", RuntimeWarning, stacklevel=4)
            torch.cuda.synchronize()
            cache.reset()
            return None
