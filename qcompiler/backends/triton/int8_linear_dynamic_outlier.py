"""``qcompiler::int8_linear_dynamic_outlier`` on the fused int8 kernel of :mod:`int8_linear`.

The outlier columns (a ``[K]`` bool mask, different on every forward) are compacted on the device
into an index list; the kernel's epilogue then gathers those columns from the 16-bit X and from
the int8 W, dequantizes the W columns in registers (``wq * w_scale / 127`` in X's dtype, as the
reference does) and adds their product. No fp copy of W is kept, as in bitsandbytes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from qcompiler.backends.triton.int8_linear import (OUTLIERS_GATHER, _check_common,
                                                   launch_int8_linear)
from qcompiler.backends.triton.quantize_rowwise_dynamic import outlier_index

__all__ = ["int8_linear_dynamic_outlier", "int8_linear_dynamic_indexed"]


def int8_linear_dynamic_indexed(xq: Tensor, x_scale: Tensor, x: Tensor, idx: Tensor, cnt: Tensor,
                                wq: Tensor, w_scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The kernel call, given the compacted outlier list ``idx[:cnt[0]]`` (int32, on device)."""
    _check_common(xq, x_scale, wq, w_scale)
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"int8_linear_dynamic_outlier: x must be float16/bfloat16, got {x.dtype}")
    k = xq.shape[-1]
    lead = xq.shape[:-1]
    n = wq.shape[0]
    xq2 = xq.reshape(-1, k)
    y = torch.empty((xq2.shape[0], n), dtype=x.dtype, device=xq.device)
    launch_int8_linear(xq2, x_scale.reshape(-1), wq, w_scale.reshape(-1), x.reshape(-1, k), None,
                       idx, cnt, bias, y, OUTLIERS_GATHER)
    return y.reshape(*lead, n)


def int8_linear_dynamic_outlier(xq: Tensor, x_scale: Tensor, x: Tensor, outlier_mask: Tensor,
                                wq: Tensor, w_scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Triton ``int8_linear_dynamic_outlier``: same semantics as the reference op."""
    k = xq.shape[-1]
    if outlier_mask.shape != (k,):
        raise ValueError(f"outlier_mask must be [{k}], got {tuple(outlier_mask.shape)}")
    if k == 0:
        idx = torch.zeros(0, dtype=torch.int32, device=xq.device)
        cnt = torch.zeros(1, dtype=torch.int32, device=xq.device)
    else:
        _, idx, cnt = outlier_index(outlier_mask.to(torch.float32), 0.5)
    return int8_linear_dynamic_indexed(xq, x_scale, x, idx, cnt, wq, w_scale, bias)
