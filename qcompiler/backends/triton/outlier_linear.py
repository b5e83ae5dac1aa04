"""Whole int8-outlier linears from the 16-bit X, dispatched by the number of rows M.

* ``M <= SMALL_M`` (decode): :func:`weight_only_linear` - X is not quantized at all; one launch
  streams int8 W (see that module for why this is both faster and more accurate here);
* otherwise, by ``act_quant`` (:mod:`.act_quant`): :func:`quantize_rowwise` (one pass over X)
  then the int8 GEMM, or the row scales only and the GEMM quantizing X in registers
  (:mod:`.fused_quant_linear`); both give the same output bit for bit.

These are what ``lower-triton`` puts in the graph in place of a ``quantize_rowwise ->
int8_linear`` pair, since M is only known at run time (prefill vs decode).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from qcompiler.backends.triton.act_quant import ActQuant, fuses_act_quant
from qcompiler.backends.triton.fused_quant_linear import (int8_dynamic_outlier_linear_fused,
                                                          int8_outlier_linear_fused)
from qcompiler.backends.triton.int8_linear import int8_linear
from qcompiler.backends.triton.int8_linear_dynamic_outlier import int8_linear_dynamic_indexed
from qcompiler.backends.triton.quantize_rowwise import quantize_rowwise
from qcompiler.backends.triton.quantize_rowwise_dynamic import quantize_rowwise_dynamic_indexed
from qcompiler.backends.triton.weight_only_linear import SMALL_M, weight_only_linear

__all__ = ["int8_outlier_linear", "int8_dynamic_outlier_linear"]


def _rows(x: Tensor) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else x.shape[:-1].numel()


def int8_outlier_linear(x: Tensor, wq: Tensor, w_scale: Tensor, outlier_idx: Tensor,
                        outlier_mask: Optional[Tensor], w_outliers: Optional[Tensor],
                        bias: Optional[Tensor], act_quant: int = ActQuant.AUTO) -> Tensor:
    """Static LLM.int8(): ``quantize_rowwise(x, idx)`` + ``int8_linear(..., x.dtype)``, or the
    weight-only kernel for M <= 16. ``outlier_mask`` ([K] int8, 1 at ``outlier_idx``) is optional
    and saves two tiny launches per call when the caller keeps it with the weight."""
    m = _rows(x)
    if m <= SMALL_M:
        return weight_only_linear(x, wq, w_scale, outlier_idx, w_outliers, bias)
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
        return weight_only_linear(x, wq, w_scale, None, None, bias)
    if x.shape[-1] and fuses_act_quant(act_quant, m, wq.shape[0], x.shape[-1]):
        return int8_dynamic_outlier_linear_fused(x, wq, w_scale, threshold, bias)
    xq, xs, _, idx, cnt = quantize_rowwise_dynamic_indexed(x, threshold)
    return int8_linear_dynamic_indexed(xq, xs, x, idx, cnt, wq, w_scale, bias)
