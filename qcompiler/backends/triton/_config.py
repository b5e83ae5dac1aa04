"""Autotune-config helpers and the low-overhead launcher shared by the Triton kernels.

Under ``TRITON_INTERPRET=1`` (the CPU CI) every kernel gets exactly one small config: the
interpreter would otherwise "benchmark" each candidate on the CPU. ``QCOMPILER_TRITON_AUTOTUNE=0``
does the same on a GPU (first GPU config only), which keeps GPU test runs short.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Hashable

import triton
from triton.runtime.autotuner import Autotuner, Heuristics

__all__ = ["interpreting", "pick_configs", "make_config", "TunedLauncher"]


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def make_config(num_warps: int = 4, num_stages: int = 3, **meta) -> triton.Config:
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def pick_configs(gpu: list[triton.Config], interp: triton.Config) -> list[triton.Config]:
    """The config list a kernel is autotuned over in this process."""
    if interpreting():
        return [interp]
    if os.environ.get("QCOMPILER_TRITON_AUTOTUNE", "1") == "0":
        return gpu[:1]
    return gpu


class TunedLauncher:
    """Launches an ``@triton.autotune`` (+ ``@triton.heuristics``) kernel: the first call for a
    ``key`` goes through the autotuner; later calls launch the chosen config straight on the
    ``JITFunction``.

    Why: on the GPU machine the Autotuner and Heuristics wrappers cost ~50 µs of host time per
    call (measured on an H200 box: 83 µs through them vs 31 µs direct for the same launch) - more
    than a whole decode-size kernel runs on the GPU. ``key`` must determine every autotune key
    and heuristic input (shapes that pick configs, dtypes), and be a tuple of ints, floats, bools,
    strs, ``None`` and torch dtypes (``qcompiler.save`` writes the chosen configs by key).

    ``name`` (``"<module>"``, ``"<module>.<variant>"``) registers the launcher in
    :mod:`.kernel_config_record`, so a saved model keeps the configs it chose.
    """

    def __init__(self, kernel: Any, name: str | None = None):
        self.kernel = kernel
        self.autotuner = None
        self.heuristics: dict[str, Callable] = {}
        fn = kernel
        while isinstance(fn, (Autotuner, Heuristics)):
            if isinstance(fn, Autotuner):
                self.autotuner = fn
            else:
                self.heuristics.update(fn.values)
            fn = fn.fn
        self.jit = fn
        self.arg_names = fn.arg_names
        self.meta: dict[Hashable, dict] = {}
        self.name = name
        if name is not None:
            from qcompiler.backends.triton.kernel_config_record import register_launcher
            register_launcher(name, self)

    def __call__(self, key: Hashable, grid, *args, **kwargs) -> None:
        meta = self.meta.get(key)
        if meta is not None:
            self.jit[grid](*args, **kwargs, **meta)
            return
        self.kernel[grid](*args, **kwargs)  # autotunes this key (GPU) and runs
        meta = dict(self.autotuner.best_config.all_kwargs()) if self.autotuner else {}
        named = {**dict(zip(self.arg_names, args)), **kwargs, **meta}
        for name, fn in self.heuristics.items():
            meta[name] = fn(named)
        self.meta[key] = meta
