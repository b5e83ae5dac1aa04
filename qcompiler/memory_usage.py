"""How much memory a model takes (each storage once) and what a step peaked at (device and host).

``storage_bytes`` counts every distinct storage under a module once: tied weights
(``lm_head.weight is embed_tokens.weight``) and views of one buffer are not counted twice.
:class:`PeakMemory` measures a ``with`` block: on CUDA the rise of
``torch.cuda.max_memory_allocated`` over what was allocated at the start; on the host the peak
resident set size, sampled by a background thread (every ``interval`` seconds) and read from
``/proc/self/status`` ``VmHWM`` when that is lower-bounded better.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["MemoryUsage", "PeakMemory", "storage_bytes", "current_rss", "records_peak_memory", "release_host_memory"]


@dataclass
class MemoryUsage:
    """Bytes of the model before and after quantizing, and what the step peaked at."""

    bytes_before: int
    bytes_after: int
    peak_device_bytes: int | None = None    # rise of max_memory_allocated during the step (CUDA only)
    peak_host_bytes: int | None = None      # peak resident set size of the process during the step
    host_bytes_at_start: int | None = None  # resident set size when the step began
    device: str = "cpu"


def storage_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module``, each storage counted once."""
    from qcompiler.model_bytes import state_bytes

    return state_bytes(module)


def release_host_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``): without
    it, the allocator keeps what each quantized block freed and the RSS grows block by block."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def current_rss() -> int:
    """Resident set size of this process in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.device_bytes``, ``pm.host_bytes``."""

    def __init__(self, device: str | torch.device | None = None, interval: float = 0.01):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.interval = interval
        self.device_bytes: int | None = None
        self.host_bytes = 0
        self.host_start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.host_bytes = max(self.host_bytes, current_rss())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._cuda_start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.host_start = self.host_bytes = current_rss()
        self._thread = threading.Thread(target=self._sample, name="qcompiler-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.host_bytes = max(self.host_bytes, current_rss())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.device_bytes = torch.cuda.max_memory_allocated(self.device) - self._cuda_start


def records_peak_memory(fn):
    """Decorator for ``compile``-like functions ``fn(model, ...) -> QuantizedModel``: the report's
    ``memory`` gets the call's peak device and host memory (bytes before/after from the report)."""
    import functools

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        dev = next((t.device for t in model.parameters()), None) if isinstance(model, nn.Module) else None
        with PeakMemory(dev) as peak:
            qm = fn(model, *args, **kwargs)
        report = qm.report()
        mem = report.memory or MemoryUsage(report.model_bytes_before, report.model_bytes_after,
                                           device=str(dev or "cpu"))
        mem.peak_device_bytes, mem.peak_host_bytes, mem.host_bytes_at_start = peak.device_bytes, peak.host_bytes, \
            peak.host_start
        report.memory = mem
        return qm

    return wrapper
