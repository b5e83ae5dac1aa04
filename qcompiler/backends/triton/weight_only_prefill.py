"""Weight-only linears at prefill size (M above ``WEIGHT_ONLY_GEMM_MAX_M``): three ways to feed
cuBLAS or the tensor cores from packed codes, picked by :func:`prefill_engine`.

* ``ENGINE_DEQUANT``: W dequantized to a whole ``[N, K]`` 16-bit temporary, then ``F.linear``
  (cuBLAS). The temporary costs a write and a read of 2 bytes per weight in HBM: at the 8B layer
  shapes ~15% of the fp16 GEMM's time, which is what keeps weight-only prefill at ~0.86x fp16;
* ``ENGINE_CHUNKED``: the same, ``CHUNK_BYTES`` of W rows at a time into ONE reused temporary
  (allocated per call, freed after: CUDA-graph safe), each chunk multiplied at once into its
  column slice of Y (``torch.addmm(..., out=y[:, n0:n1])``, cuBLAS with ``ldc = N``, no copy).
  A chunk that fits in L2 is read back by the GEMM from L2, and rewriting the same buffer keeps
  its lines there, so HBM sees mostly the packed codes;
* ``ENGINE_MIXED``: :func:`weight_only_matmul` (W unpacked in registers, fed to ``tl.dot``) with
  a large-tile config for Hopper (``MIXED_CONFIG``): no temporary at all.

All three compute W in float32 and round it to X's dtype once, as the reference does; they differ
only in the GEMM's summation order. ``benchmarks/bench_weight_only_prefill.py`` measures them.

Measured (NVIDIA H200, triton 3.6, 2026-12-02T19:58, 8B layer shapes, M = 2048; per layer vs fp16
cuBLAS): dequant 0.89-0.92x, chunked 16 MB 0.70-0.72x, chunked 8 MB 0.63-0.65x, mixed 0.16-0.30x.
So ``AUTO`` keeps ``ENGINE_DEQUANT``; the other two stay for benchmarks (docs/triton-int8-prefill.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

from qcompiler.backends.triton._weight_operand import WeightOperand
from qcompiler.backends.triton.dequantize_weight import dequantize_weight
from qcompiler.backends.triton.weight_only_gemv import weight_only_matmul

__all__ = ["ENGINE_AUTO", "ENGINE_DEQUANT", "ENGINE_CHUNKED", "ENGINE_MIXED", "CHUNK_BYTES", "CHUNKED_MIN_M",
           "MIXED_CONFIG", "MIXED_MIN_M", "prefill_engine", "prefill_linear", "operand_rows", "chunk_rows"]

ENGINE_AUTO, ENGINE_DEQUANT, ENGINE_CHUNKED, ENGINE_MIXED = 0, 1, 2, 3

# 16-bit W bytes per chunk: well inside the H100/H200 L2 (50 MB) next to X's and Y's tiles.
CHUNK_BYTES = 16 << 20
# AUTO takes the chunked path / the mixed GEMM from this many rows on; None: never (both measured slower).
CHUNKED_MIN_M: Optional[int] = None
MIXED_MIN_M: Optional[int] = None
# 128x128 tiles, 8 warps: what the int8 GEMM uses on Hopper; BLOCK_K 64 divides the usual groups.
MIXED_CONFIG = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=3)


def prefill_engine(engine: int, m: int) -> int:
    """The engine an ``m``-row call takes: ``engine`` when forced, else by the measured thresholds."""
    if engine != ENGINE_AUTO:
        return engine
    if MIXED_MIN_M is not None and m >= MIXED_MIN_M:
        return ENGINE_MIXED
    if CHUNKED_MIN_M is not None and m >= CHUNKED_MIN_M:
        return ENGINE_CHUNKED
    return ENGINE_DEQUANT


def chunk_rows(w: WeightOperand, elem_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """W rows per chunk: about ``chunk_bytes`` of 16-bit W, a multiple of what keeps NF4's
    double-quantization blocks (``dq_block`` absmax codes, flat ``[N, G]`` order) whole."""
    align = w.dq_block // math.gcd(w.groups, w.dq_block) if w.dq_scale is not None else 1
    align = math.lcm(align, 8)  # cuBLAS likes 16-byte aligned column slices of Y
    rows = max(align, chunk_bytes // max(w.k * elem_bytes, 1) // align * align)
    return min(rows, w.n)


def operand_rows(w: WeightOperand, n0: int, n1: int) -> WeightOperand:
    """Rows ``n0:n1`` of W as an operand of its own (views, no copy). With double quantization
    ``n0 * G`` must be a multiple of ``dq_block`` (what :func:`chunk_rows` keeps)."""
    g = w.groups
    dq = w.dq_scale
    if dq is not None:
        if (n0 * g) % w.dq_block:
            raise ValueError(f"operand_rows: row {n0} splits a double-quantization block of {w.dq_block}")
        dq = dq[(n0 * g) // w.dq_block: -(-(n1 * g) // w.dq_block)]
    return dataclasses.replace(
        w, qweight=w.qweight[n0:n1], scales=w.scales[n0:n1],
        zeros=w.zeros[n0:n1] if w.zeros is not None else None, dq_scale=dq, n=n1 - n0)


def _chunked(x2: Tensor, w: WeightOperand, bias: Optional[Tensor], chunk_bytes: int) -> Tensor:
    m = x2.shape[0]
    rows = chunk_rows(w, x2.element_size(), chunk_bytes)
    y = torch.empty((m, w.n), dtype=x2.dtype, device=x2.device)
    buf = torch.empty((rows, w.k), dtype=x2.dtype, device=x2.device)  # this call's only temporary
    b = bias.to(x2.dtype) if bias is not None else None
    for n0 in range(0, w.n, rows):
        n1 = min(n0 + rows, w.n)
        wd = dequantize_weight(operand_rows(w, n0, n1), x2.dtype, out=buf[: n1 - n0])
        if b is None:
            torch.mm(x2, wd.t(), out=y[:, n0:n1])
        else:
            torch.addmm(b[n0:n1], x2, wd.t(), out=y[:, n0:n1])
    return y


def prefill_linear(x: Tensor, w: WeightOperand, bias: Optional[Tensor], engine: int = ENGINE_AUTO,
                   chunk_bytes: int = CHUNK_BYTES, config: Optional[dict] = None) -> Tensor:
    """``x [..., K]`` (fp16/bf16) times the weight-only ``w``; ``engine``/``chunk_bytes``/``config``
    force a path (benchmarks), by default :func:`prefill_engine` picks."""
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    how = prefill_engine(engine, x2.shape[0])
    if how == ENGINE_MIXED:
        return weight_only_matmul(x, w, bias, config=config or MIXED_CONFIG)
    if how == ENGINE_CHUNKED and w.n and k and chunk_rows(w, x.element_size(), chunk_bytes) < w.n:
        return _chunked(x2, w, bias, chunk_bytes).reshape(*lead, w.n)
    wd = dequantize_weight(w, x.dtype)
    return torch.nn.functional.linear(x, wd, bias.to(x.dtype) if bias is not None else None)
