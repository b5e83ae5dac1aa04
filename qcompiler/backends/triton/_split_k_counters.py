"""Tile counters for the split-K GEMVs' last-arriver reduction, without a zero-fill per call.

The programs of an output tile each add 1 to the tile's int32 counter; the one that sees
``SPLIT_K - 1`` reduces the partial sums and writes the counter back to 0. So counters that start
at zero stay zero between launches, and one persistent buffer per device serves every call: no
``torch.zeros`` (a ``FillFunctor`` launch, ~0.9 us of GPU time per linear in a decode step).

Where the buffer lives matters for CUDA graphs: it is made once per device, on a helper thread, so
it is never carved out of a graph's private memory pool (torch.compile's cudagraph trees route
every allocation of the *current thread* to their pool during warm-up and capture; a tensor that
outlives the call there fails their check "tensor(s) in the cudagraph pool not tracked as
outputs"). Each call takes the next slice of a ring, so launches on different streams (or graph
nodes replayed next to eager calls) do not share counters unless the ring wrapped in between.
A stream that is capturing before the buffer exists gets per-call zeroed counters instead
(correct, one fill launch more), as the previous code always did.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

__all__ = ["split_k_counters", "RING_COUNTERS"]

RING_COUNTERS = 1 << 18  # int32 counters per device (1 MiB): thousands of launches before a wrap

_BUFFERS: dict[torch.device, Tensor] = {}
_NEXT: dict[torch.device, int] = {}
_LOCK = threading.Lock()


def _make_outside_pools(device: torch.device) -> Tensor:
    """A zeroed buffer allocated by another thread: outside any pool this thread allocates to."""
    if device.type != "cuda":
        return torch.zeros(RING_COUNTERS, dtype=torch.int32, device=device)
    out: list = []

    def work() -> None:
        try:
            with torch.cuda.device(device):
                buf = torch.zeros(RING_COUNTERS, dtype=torch.int32, device=device)
                torch.cuda.current_stream(device).synchronize()  # once per device: zeros land first
            out.append(buf)
        except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
            out.append(e)

    t = threading.Thread(target=work, name="qcompiler-split-k-counters")
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def split_k_counters(device: torch.device, count: int) -> Tensor:
    """``count`` int32 counters, all zero now and left zero by a launch that uses each of them
    exactly as the last-arriver protocol does (every program of a tile increments, the last one
    resets)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    count = max(count, 1)
    buf = _BUFFERS.get(device)
    if buf is None:
        if count > RING_COUNTERS or _capturing(device):
            # Allocating here would put the buffer into the graph being captured.
            return torch.zeros(count, dtype=torch.int32, device=device)
        with _LOCK:
            buf = _BUFFERS.get(device)
            if buf is None:
                buf = _BUFFERS[device] = _make_outside_pools(device)
                _NEXT[device] = 0
    if count > RING_COUNTERS:
        return torch.zeros(count, dtype=torch.int32, device=device)
    with _LOCK:
        start = _NEXT[device]
        if start + count > RING_COUNTERS:
            start = 0
        _NEXT[device] = start + count
    return buf[start:start + count]
