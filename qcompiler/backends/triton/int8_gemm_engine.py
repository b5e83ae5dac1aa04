"""Which engine runs an int8 linear's int8 x int8 GEMM (same int32 product, same epilogue):

* ``GEMM_TRITON``: :mod:`.int8_linear`'s pointer-load Triton kernel (any GPU, the CPU interpreter);
* ``GEMM_INT_MM``: cuBLASLt through ``torch._int_mm`` + the epilogue kernel (:mod:`.int8_linear_int_mm`);
* ``GEMM_TMA``: the Triton kernel with TMA loads and a persistent tile loop (:mod:`.int8_linear_tma`);
* ``GEMM_AUTO`` (default): by M, from the thresholds below (measured by
  ``benchmarks/bench_int8_prefill.py``); an engine whose operand limits a shape breaks falls back
  to ``GEMM_TRITON``, so a forced choice never fails on shape.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from qcompiler.backends.triton.int8_linear_int_mm import int_mm_supported
from qcompiler.backends.triton.int8_linear_tma import tma_supported

__all__ = ["GEMM_AUTO", "GEMM_TRITON", "GEMM_INT_MM", "GEMM_TMA", "INT_MM_MIN_M", "TMA_MIN_M", "pick_gemm"]

GEMM_AUTO, GEMM_TRITON, GEMM_INT_MM, GEMM_TMA = 0, 1, 2, 3

# AUTO takes the engine from this many rows on; None: never (not measured faster than GEMM_TRITON).
INT_MM_MIN_M: Optional[int] = None
TMA_MIN_M: Optional[int] = None


def pick_gemm(gemm: int, xq: Tensor, wq: Tensor) -> int:
    """The engine that runs ``xq [M, K] @ wq [N, K].T`` for the request ``gemm``."""
    if gemm == GEMM_AUTO:
        m = xq.shape[0]
        if TMA_MIN_M is not None and m >= TMA_MIN_M and tma_supported(xq, wq):
            return GEMM_TMA
        if INT_MM_MIN_M is not None and m >= INT_MM_MIN_M and int_mm_supported(xq, wq):
            return GEMM_INT_MM
        return GEMM_TRITON
    if gemm == GEMM_INT_MM and int_mm_supported(xq, wq):
        return GEMM_INT_MM
    if gemm == GEMM_TMA and tma_supported(xq, wq):
        return GEMM_TMA
    return GEMM_TRITON
