"""Autotune-config helpers shared by the Triton kernels.

Under ``TRITON_INTERPRET=1`` (the CPU CI) every kernel gets exactly one small config: the
interpreter would otherwise "benchmark" each candidate on the CPU. ``QCOMPILER_TRITON_AUTOTUNE=0``
does the same on a GPU (first GPU config only), which keeps GPU test runs short.
"""

from __future__ import annotations

import os

import triton

__all__ = ["interpreting", "pick_configs", "make_config"]


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
