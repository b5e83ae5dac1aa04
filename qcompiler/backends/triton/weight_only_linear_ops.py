"""Whole weight-only linears (UINT 8/4-bit and NF4), dispatched by the number of rows M:

* ``M = 1`` (decode): :func:`weight_only_gemv_row` where its tiles hold the groups whole (the
  usual group sizes), else :func:`weight_only_gemv` - one split-K launch that unpacks W in registers;
* ``M <= 16``: :func:`weight_only_gemv` (tensor-core form);
* ``16 < M <= WEIGHT_ONLY_GEMM_MAX_M``: :func:`weight_only_matmul` - the same kernel tiled over M
  (mixed-input GEMM): reads the packed W once, where dequantize + cuBLAS would write and re-read a
  16-bit copy of it;
* otherwise: :func:`.weight_only_prefill.prefill_linear`: :func:`dequantize_weight` (W to x's
  dtype) then cuBLAS, which wins once the GEMM is compute-bound (whole, or in L2-sized chunks).

The two thresholds are module constants; ``benchmarks/bench_weight_only.py`` measures both sides.

These are what ``lower-triton`` puts in the graph for ``qcompiler::weight_only_linear`` and
``qcompiler::nf4_linear`` (the latter with NF4's double quantization fused in), since M is only
known at run time (prefill vs decode).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from qcompiler.backends.triton._weight_operand import WeightOperand, nf4_operand, uint_operand
from qcompiler.backends.triton.weight_only_gemv import GEMV_MAX_M, weight_only_gemv, weight_only_matmul
from qcompiler.backends.triton.weight_only_gemv_row import row_supported, weight_only_gemv_row
from qcompiler.backends.triton.weight_only_prefill import prefill_linear

__all__ = ["weight_only_uint_linear", "weight_only_nf4_linear", "WEIGHT_ONLY_SMALL_M",
           "WEIGHT_ONLY_GEMM_MAX_M"]

# Rows up to which the GEMV runs.
WEIGHT_ONLY_SMALL_M = GEMV_MAX_M
# Rows up to which the mixed-input GEMM runs; above, dequantize + cuBLAS. At M = 2048 the mixed GEMM
# ran at 0.16-0.30x cuBLAS fp16 on the 8B shapes (H200, benchmarks/bench_weight_only_prefill.py);
# between 16 and 2048 rows the crossing point is still an estimate.
WEIGHT_ONLY_GEMM_MAX_M = 256


def _check_x(x: Tensor, what: str) -> None:
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{what}: x must be float16/bfloat16, got {x.dtype}")


def _linear(x: Tensor, w: WeightOperand, bias: Optional[Tensor]) -> Tensor:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else x.shape[:-1].numel()
    if rows == 1 and row_supported(w):
        return weight_only_gemv_row(x, w, bias)
    if rows <= WEIGHT_ONLY_SMALL_M:
        return weight_only_gemv(x, w, bias)
    if rows <= WEIGHT_ONLY_GEMM_MAX_M:
        return weight_only_matmul(x, w, bias)
    return prefill_linear(x, w, bias)  # dequantize + cuBLAS, whole or in L2-sized chunks, or mixed GEMM


def weight_only_uint_linear(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor],
                            bias: Optional[Tensor], bits: int, group_size: int) -> Tensor:
    """Same semantics as ``torch.ops.qcompiler.weight_only_linear`` (W multiplied in x's dtype)."""
    _check_x(x, "weight_only_uint_linear")
    return _linear(x, uint_operand(qweight, scales, zeros, bits, group_size, x.shape[-1], x.device), bias)


def weight_only_nf4_linear(x: Tensor, qweight: Tensor, absmax: Tensor, absmax_scale: Optional[Tensor],
                           absmax_offset: Optional[Tensor], bias: Optional[Tensor], block_size: int,
                           absmax_block: int, levels: Optional[Tensor] = None,
                           levels_half: Optional[Tensor] = None) -> Tensor:
    """``torch.ops.qcompiler.nf4_linear``; with ``absmax_scale``/``absmax_offset`` given, ``absmax``
    holds int8 codes and the op is ``nf4_linear(x, qweight, dequantize_blockwise_int8(absmax,
    absmax_scale, absmax_offset, absmax_block), bias, block_size)`` in one launch."""
    _check_x(x, "weight_only_nf4_linear")
    w = nf4_operand(qweight, absmax, absmax_scale, absmax_offset, block_size, absmax_block, x.shape[-1],
                    x.device, levels, levels_half)
    return _linear(x, w, bias)
