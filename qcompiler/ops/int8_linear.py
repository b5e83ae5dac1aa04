"""int8 x int8 -> int32 matmul with dequantization and the fp outlier product fused in."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["int8_matmul", "int8_linear", "int8_linear_dynamic_outlier", "int8_linear_fake",
           "int8_linear_dynamic_outlier_fake"]

_INV_127_SQ = 1.0 / (127.0 * 127.0)


def int8_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a [M, K] int8 @ b[N, K].T int8 -> [M, N] int32``, exact."""
    if a.is_cuda:
        m, k = a.shape
        n = b.shape[0]
        if m > 16 and k % 8 == 0 and n % 8 == 0 and k > 0:
            try:
                return torch._int_mm(a, b.t())
            except RuntimeError:  # cuBLASLt turns some shapes down (CUBLAS_STATUS_NOT_SUPPORTED)
                pass
        # |sum| <= K * 127^2 < 2^53 for any realistic K: float64 is exact here.
        return (a.double() @ b.double().t()).to(torch.int32)
    return torch.mm(a.to(torch.int32), b.to(torch.int32).t())


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _dequant(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor) -> Tensor:
    acc = int8_matmul(_flat(xq), wq)
    xs = x_scale.reshape(-1, 1) if x_scale.numel() != 1 else x_scale.reshape(1, 1)
    return acc.float() * (xs * w_scale.reshape(1, -1)) * _INV_127_SQ


@torch.library.custom_op("qcompiler::int8_linear", mutates_args=())
def int8_linear(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor,
                x_outliers: Optional[Tensor], w_outliers: Optional[Tensor],
                bias: Optional[Tensor], out_dtype: torch.dtype) -> Tensor:
    """``y = (xq @ wq.T) * (x_scale ⊗ w_scale) / 127² + x_outliers @ w_outliers.T + bias``.

    ``xq [..., K] int8``, ``x_scale [..., 1]`` or ``[1]``, ``wq [N, K] int8``, ``w_scale [N]`` or
    ``[1]``; ``x_outliers [..., n]`` and ``w_outliers [N, n]`` in float (the 16-bit part of the
    decomposition), or both None. Output ``[..., N]`` in ``out_dtype``.
    """
    lead = xq.shape[:-1]
    y = _dequant(xq, x_scale, wq, w_scale)
    if x_outliers is not None and w_outliers is not None and x_outliers.shape[-1]:
        y = y + (_flat(x_outliers) @ w_outliers.to(x_outliers.dtype).t()).float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype).reshape(*lead, wq.shape[0])


@int8_linear.register_fake
def int8_linear_fake(xq, x_scale, wq, w_scale, x_outliers, w_outliers, bias, out_dtype):
    return xq.new_empty((*xq.shape[:-1], wq.shape[0]), dtype=out_dtype)


@torch.library.custom_op("qcompiler::int8_linear_dynamic_outlier", mutates_args=())
def int8_linear_dynamic_outlier(xq: Tensor, x_scale: Tensor, x: Tensor, outlier_mask: Tensor,
                                wq: Tensor, w_scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The dynamic-outlier form: the columns flagged in ``outlier_mask [K]`` are multiplied in
    ``x.dtype`` against the dequantized int8 weight columns (no fp copy of W is kept, as in
    bitsandbytes). Output dtype is ``x.dtype``."""
    lead = xq.shape[:-1]
    y = _dequant(xq, x_scale, wq, w_scale)
    idx = outlier_mask.nonzero().squeeze(1)
    if idx.numel():
        w_cols = wq.index_select(1, idx).float() * (w_scale.reshape(-1, 1) / 127.0)
        y = y + (_flat(x).index_select(1, idx) @ w_cols.to(x.dtype).t()).float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*lead, wq.shape[0])


@int8_linear_dynamic_outlier.register_fake
def int8_linear_dynamic_outlier_fake(xq, x_scale, x, outlier_mask, wq, w_scale, bias):
    return x.new_empty((*x.shape[:-1], wq.shape[0]))
