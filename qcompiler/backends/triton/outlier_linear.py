"""Whole int8-outlier linears from the 16-bit X, dispatched by the number of rows M.

* ``M = 1`` (decode): :func:`weight_only_gemv_row` on the signed int8 W (split-K, the fp16 outlier
  columns added in its epilogue) - X is not quantized at all;
* ``2 <= M <= SMALL_M``: :func:`weight_only_gemv` (tensor-core form, split-K) on the same signed
  int8 W, outlier columns in its epilogue (:func:`weight_only_linear`, without split-K, stays for
  a per-tensor scale; see that module for why skipping X's quantization is also more accurate);
* otherwise, by ``act_quant`` (:mod:`.act_quant`): :func:`quantize_rowwise` (one pass over X)
  then the int8 GEMM, or the row scales only and the GEMM quantizing X in registers
  (:mod:`.fused_quant_linear`); both give the same output bit for bit.

These are what ``lower-triton`` puts in the graph in place of a ``quantize_rowwise ->
int8_linear`` pair, since M is only known at run time (prefill vs decode).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from qcompiler.backends.triton.act_quant import ActQuant, fuses_act_quant
from qcompiler.backends.triton.fused_quant_linear import (int8_dynamic_outlier_linear_fused,
                                                          int8_outlier_linear_fused)
from qcompiler.backends.triton.int8_linear import int8_linear
from qcompiler.backends.triton.int8_linear_dynamic_outlier import int8_linear_dynamic_indexed
from qcompiler.backends.triton.quantize_rowwise import quantize_rowwise
from qcompiler.backends.triton.quantize_rowwise_dynamic import quantize_rowwise_dynamic_indexed
from qcompiler.backends.triton._weight_operand import int8_signed_operand
from qcompiler.backends.triton.weight_only_gemv import weight_only_gemv
from qcompiler.backends.triton.weight_only_gemv_row import weight_only_gemv_row
from qcompiler.backends.triton.weight_only_linear import SMALL_M, weight_only_linear

__all__ = ["int8_outlier_linear", "int8_dynamic_outlier_linear"]


def _rows(x: Tensor) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else x.shape[:-1].numel()


def _per_row_scale(x: Tensor, wq: Tensor, w_scale: Tensor) -> bool:
    # The split-K GEMVs take one float32 scale per output row (a per-tensor scale stays on the old path).
    return (x.shape[-1] > 0 and wq.dtype == torch.int8 and wq.dim() == 2 and wq.shape[1] == x.shape[-1]
            and w_scale.numel() == wq.shape[0] and w_scale.dtype == torch.float32)


def _small_m(x: Tensor, wq: Tensor, w_scale: Tensor, outlier_idx: Optional[Tensor], w_outliers: Optional[Tensor],
             bias: Optional[Tensor]) -> Tensor:
    """Decode: X stays 16-bit; int8 W streamed by a split-K GEMV (one row: the row kernel)."""
    if not _per_row_scale(x, wq, w_scale):
        return weight_only_linear(x, wq, w_scale, outlier_idx, w_outliers, bias)
    w = int8_signed_operand(wq, w_scale, x.device)
    if _rows(x) == 1:
        return weight_only_gemv_row(x, w, bias, outlier_idx, w_outliers)
    return weight_only_gemv(x, w, bias, outlier_idx, w_outliers, dot=True)


def int8_outlier_linear(x: Tensor, wq: Tensor, w_scale: Tensor, outlier_idx: Tensor,
                        outlier_mask: Optional[Tensor], w_outliers: Optional[Tensor],
                        bias: Optional[Tensor], act_quant: int = ActQuant.AUTO) -> Tensor:
    """Static LLM.int8(): ``quantize_rowwise(x, idx)`` + ``int8_linear(..., x.dtype)``, or the
    weight-only kernel for M <= 16. ``outlier_mask`` ([K] int8, 1 at ``outlier_idx``) is optional
    and saves two tiny launches per call when the caller keeps it with the weight."""
    m = _rows(x)
    if m <= SMALL_M:
        return _small_m(x, wq, w_scale, outlier_idx, w_outliers, bias)
    if x.shape[-1] and fuses_act_quant(act_quant, m, wq.shape[0], x.shape[-1]):
        return int8_outlier_linear_fused(x, wq, w_scale, outlier_idx, outlier_mask, w_outliers, bias)
    xq, xs, xo = quantize_rowwise(x, outlier_idx, outlier_mask)
    return int8_linear(xq, xs, wq, w_scale, xo, w_outliers, bias, x.dtype)


def int8_dynamic_outlier_linear(x: Tensor, wq: Tensor, w_scale: Tensor, threshold: float,
                                bias: Optional[Tensor], act_quant: int = ActQuant.AUTO) -> Tensor:
    """Dynamic LLM.int8() (outlier columns found per forward): ``quantize_rowwise_dynamic`` +
    ``int8_linear_dynamic_outlier``, or the weight-only kernel for M <= 16 (where the full int8
    ``wq`` of dynamic mode needs no decomposition)."""
    m = _rows(x)
    if m <= SMALL_M:
        return _small_m(x, wq, w_scale, None, None, bias)
    if x.shape[-1] and fuses_act_quant(act_quant, m, wq.shape[0], x.shape[-1]):
        return int8_dynamic_outlier_linear_fused(x, wq, w_scale, threshold, bias)
    xq, xs, _, idx, cnt = quantize_rowwise_dynamic_indexed(x, threshold)
    return int8_linear_dynamic_indexed(xq, xs, x, idx, cnt, wq, w_scale, bias)
