"""Whole int8 linears from the 16-bit X with the activation quantization inside the GEMM.

Static LLM.int8() and SmoothQuant (no outlier columns)::

    scale = row_absmax(x, outlier_mask)                     # M floats
    y = int8_linear_fused_quant(x, scale, wq, w_scale, idx, w_outliers, bias)

Dynamic LLM.int8(): the outlier columns of this X first (:func:`.find_outlier_columns`), then the
same two launches, the W columns dequantized in the epilogue. Same outputs, bit for bit, as
``quantize_rowwise`` + ``int8_linear`` (see :mod:`.int8_linear_fused_quant`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from qcompiler.backends.triton.int8_epilogue import OUTLIERS_GATHER, OUTLIERS_GATHER_X, OUTLIERS_NONE
from qcompiler.backends.triton.int8_linear_fused_quant import launch_int8_linear_fused_quant
from qcompiler.backends.triton.quantize_rowwise import outlier_mask_from_idx
from qcompiler.backends.triton.quantize_rowwise_dynamic import find_outlier_columns
from qcompiler.backends.triton.row_absmax import row_absmax_into

__all__ = ["int8_outlier_linear_fused", "int8_dynamic_outlier_linear_fused"]


def _check_x(x: Tensor, wq: Tensor, w_scale: Tensor, what: str) -> None:
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{what}: x must be float16/bfloat16, got {x.dtype}")
    if x.shape[-1] == 0:
        raise ValueError(f"{what}: x has no input features (K = 0); use the separate path")
    if wq.dtype != torch.int8 or wq.dim() != 2 or wq.shape[1] != x.shape[-1]:
        raise ValueError(f"{what}: wq must be int8 [N, {x.shape[-1]}], got {wq.dtype} {tuple(wq.shape)}")
    if w_scale.dtype != torch.float32 or w_scale.numel() not in (1, wq.shape[0]):
        raise ValueError(f"{what}: w_scale must be float32 with 1 or {wq.shape[0]} elements, got "
                         f"{w_scale.dtype} {tuple(w_scale.shape)}")


def int8_outlier_linear_fused(x: Tensor, wq: Tensor, w_scale: Tensor, outlier_idx: Tensor,
                              outlier_mask: Optional[Tensor], w_outliers: Optional[Tensor],
                              bias: Optional[Tensor]) -> Tensor:
    """``quantize_rowwise(x, outlier_idx)`` + ``int8_linear(..., x.dtype)`` in two launches that
    never write int8 X. ``outlier_mask``: ``[K]`` int8/bool, 1 at ``outlier_idx`` (built if None)."""
    _check_x(x, wq, w_scale, "int8_outlier_linear (fused)")
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    m, n = x2.shape[0], wq.shape[0]
    n_out = outlier_idx.numel()
    mask = None
    if n_out:
        mask = outlier_mask if outlier_mask is not None else outlier_mask_from_idx(outlier_idx, k)
        mask = mask.view(torch.int8) if mask.dtype == torch.bool else mask
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    row_absmax_into(x2, mask, scale)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    use_out = n_out > 0 and w_outliers is not None
    launch_int8_linear_fused_quant(x2, scale, mask, wq, w_scale.reshape(-1),
                                   w_outliers if use_out else None, outlier_idx if use_out else None,
                                   None, bias, y, OUTLIERS_GATHER_X if use_out else OUTLIERS_NONE)
    return y.reshape(*x.shape[:-1], n)


def int8_dynamic_outlier_linear_fused(x: Tensor, wq: Tensor, w_scale: Tensor, threshold: float,
                                      bias: Optional[Tensor]) -> Tensor:
    """``quantize_rowwise_dynamic`` + ``int8_linear_dynamic_outlier`` without int8 X in memory."""
    _check_x(x, wq, w_scale, "int8_dynamic_outlier_linear (fused)")
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    m, n = x2.shape[0], wq.shape[0]
    mask, idx, cnt = find_outlier_columns(x2, threshold)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    row_absmax_into(x2, mask, scale)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    launch_int8_linear_fused_quant(x2, scale, mask, wq, w_scale.reshape(-1), None, idx, cnt, bias, y,
                                   OUTLIERS_GATHER)
    return y.reshape(*x.shape[:-1], n)
