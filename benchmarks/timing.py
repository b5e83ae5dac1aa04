"""Timing helpers shared by the GPU benchmarks: one definition of each number we report.

* ``bench_ms``: median of ``triton.testing.do_bench`` (L2 flushed between calls). When the host
  needs longer to issue a call than the GPU needs to run it, this includes launch overhead.
  Without CUDA (a ``TRITON_INTERPRET=1`` smoke run) it is the median wall time of a few calls.
* ``gpu_ms``: median of CUDA events around each call with the GPU held back by
  ``torch.cuda._sleep`` first, so the host has queued the whole call before the GPU starts: GPU
  time only (what a CUDA-graph'd decode loop sees); L2 flushed as well.
* ``host_us``: host time per call, issuing ``n`` calls back to back.
* ``wall_ms``: median wall time of whole synchronized calls (end-to-end runs: prefill, generate).
* ``warm_up``: one call, synchronized (it compiles and autotunes), returning its result.
* ``run_meta``: card, date, command and library versions, recorded with every figure.
* ``JsonResults``: rewrites ``$OUT/<name>.json`` after every row, so a run cut short by the
  device's time limit still returns what it measured.

Benchmarks import it as a sibling module (``PYTHONPATH=.:benchmarks``, or run from
``benchmarks/``): ``from timing import bench_ms, gpu_ms, host_us``.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch

__all__ = ["bench_ms", "gpu_ms", "host_us", "wall_ms", "warm_up", "sync", "card_name",
           "run_meta", "JsonResults", "error_line"]

_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any GPU's L2: zeroing it evicts the operands
_SLEEP_CYCLES = 1_000_000  # ~0.5 ms of GPU cycles: the host gets well ahead of the GPU


def _cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    """Wait for the GPU (no-op without CUDA)."""
    if _cuda():
        torch.cuda.synchronize()


def warm_up(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` once (compiles, autotunes) and wait for it; returns its result."""
    out = fn()
    sync()
    return out


def bench_ms(fn: Callable[[], Any], rep: int = 100, warmup: int = 25, cpu_calls: int = 3) -> float:
    """Median ms per call: ``triton.testing.do_bench`` on CUDA, else median wall of ``cpu_calls``."""
    if _cuda():
        import triton
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    times = []
    for _ in range(cpu_calls):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def gpu_ms(fn: Callable[[], Any], n: int = 60) -> float | None:
    """Median GPU-only ms of ``fn`` (launch overhead hidden, see the module docstring); None without CUDA."""
    if not _cuda():
        return None
    flush = torch.empty(_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        flush.zero_()
        torch.cuda._sleep(_SLEEP_CYCLES)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in zip(starts, ends))[n // 2]


def host_us(fn: Callable[[], Any], n: int = 200) -> float | None:
    """Host µs per call over ``n`` back-to-back calls (the GPU may still be busy); None without CUDA."""
    if not _cuda():
        return None
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    t = time.perf_counter() - t
    torch.cuda.synchronize()
    return t / n * 1e6



def graph_replay_us(calls: list[Callable[[], Any]], reps: int = 20) -> float:
    """GPU µs per call: ``calls`` run once (compile, autotune), are captured in order into one CUDA graph
    and replayed ``reps`` times; no host time is in the figure. CUDA only."""
    for f in calls:
        f()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in calls:
            f()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * len(calls))

def wall_ms(fn: Callable[[], Any], reps: int = 1) -> float:
    """Median wall ms of ``reps`` synchronized calls (start and end both wait for the GPU)."""
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def error_line(exc: BaseException, limit: int = 200) -> str:
    """``exc`` as one short line for a results row ("TypeName: first line of the message")."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:limit]


def card_name() -> str:
    """The CUDA device's name, or where a CPU run ran."""
    if _cuda():
        return torch.cuda.get_device_name()
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return "CPU (Triton interpreter)" if interp else "CPU"


def run_meta(peers: tuple[str, ...] = ("triton",), **extra: Any) -> dict:
    """Card, date, command, torch and ``peers``' versions ("n/a: reason" when one fails to import)."""
    meta = {"card": card_name(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "torch": torch.__version__, **extra}
    for mod in peers:
        try:
            meta[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - a missing or broken peer is recorded, not fatal
            meta[mod] = f"n/a: {type(e).__name__}: {e}".splitlines()[0]
    return meta


class JsonResults:
    """``{"meta": ..., "results": [rows], **extra}`` rewritten after every ``add``.

    The file is ``path`` if given, else ``$OUT/<filename>`` when ``OUT`` is set, else nowhere.
    """

    def __init__(self, filename: str, meta: dict, path: str | None = None):
        out = os.environ.get("OUT")
        self.path = path or (os.path.join(out, filename) if out else None)
        self.meta, self.results, self.extra = meta, [], {}

    def add(self, row: dict) -> None:
        """Append one row and rewrite the file."""
        self.results.append(row)
        self.write()

    def write(self, **extra: Any) -> dict:
        """Rewrite the file, merging ``extra`` top-level keys (e.g. autotuned configs); returns the record."""
        self.extra.update(extra)
        record = {"meta": self.meta, "results": self.results, **self.extra}
        if self.path:
            with open(self.path, "w") as f:
                json.dump(record, f, indent=1, default=str)
        return record
