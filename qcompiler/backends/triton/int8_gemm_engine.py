"""Which engine runs an int8 linear's int8 x int8 GEMM (same int32 product, same epilogue):

* ``GEMM_TRITON``: :mod:`.int8_linear`'s pointer-load Triton kernel (any GPU, the CPU interpreter);
* ``GEMM_INT_MM``: cuBLASLt through ``torch._int_mm`` + the epilogue kernel (:mod:`.int8_linear_int_mm`);
* ``GEMM_TMA``: the Triton kernel with TMA loads and a persistent tile loop (:mod:`.int8_linear_tma`);
* ``GEMM_AUTO`` (default): by M and N, from the thresholds below (measured by
  ``benchmarks/bench_int8_prefill.py``); an engine whose operand limits a shape breaks falls back
  to ``GEMM_TRITON``, so a forced choice never fails on shape.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from qcompiler.backends.triton.int8_linear_int_mm import int_mm_supported
from qcompiler.backends.triton.int8_linear_tma import tma_supported

__all__ = ["GEMM_AUTO", "GEMM_TRITON", "GEMM_INT_MM", "GEMM_TMA", "INT_MM_MIN_M", "TMA_MIN_M", "TMA_MIN_N",
           "pick_gemm"]

GEMM_AUTO, GEMM_TRITON, GEMM_INT_MM, GEMM_TMA = 0, 1, 2, 3

# AUTO's thresholds, from benchmarks/bench_int8_prefill.py (NVIDIA H200, triton 3.6, 2026-12-02T19:57):
# the TMA kernel beat the pointer kernel at M = 2048 and 8192 on every N >= 4096 shape of a
# Llama-3-8B layer (e.g. gate/up, M = 2048: 229.5 vs 268.5 µs GEMM; down: 191.3 vs 230.1), lost
# on k/v (N = 1024: 21.9 vs 17.8 µs, fewer tiles than SMs) and at M = 512 on q/o (22.2 vs 18.5).
TMA_MIN_M: Optional[int] = 2048
TMA_MIN_N = 4096
# _int_mm + the epilogue kernel was slower than the pointer kernel on every shape measured
# (530-860 TOP/s vs 900-1050): None = never by default.
INT_MM_MIN_M: Optional[int] = None


def pick_gemm(gemm: int, xq: Tensor, wq: Tensor) -> int:
    """The engine that runs ``xq [M, K] @ wq [N, K].T`` for the request ``gemm``."""
    if gemm == GEMM_AUTO:
        m = xq.shape[0]
        if TMA_MIN_M is not None and m >= TMA_MIN_M and wq.shape[0] >= TMA_MIN_N and tma_supported(xq, wq):
            return GEMM_TMA
        if INT_MM_MIN_M is not None and m >= INT_MM_MIN_M and int_mm_supported(xq, wq):
            return GEMM_INT_MM
        return GEMM_TRITON
    if gemm == GEMM_INT_MM and int_mm_supported(xq, wq):
        return GEMM_INT_MM
    if gemm == GEMM_TMA and tma_supported(xq, wq):
        return GEMM_TMA
    return GEMM_TRITON
