"""``qcompiler::quantize_rowwise_dynamic``: outlier columns found on every forward.

Three small launches, no host sync:

1. ``_col_absmax_kernel``: per-column max |x| over all rows (tiles of rows, ``atomic_max`` into
   a zeroed float32 ``[K]``; |x| >= 0, so float max is well defined);
2. ``_outlier_columns_kernel`` (one program): ``mask = colmax > threshold``, and the compacted
   index list ``idx[:cnt]`` of those columns (a running ``cumsum``), which the dynamic matmul
   reads so that it touches only the outlier columns;
3. the static kernel of :mod:`quantize_rowwise` with that mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import TunedLauncher, make_config, pick_configs
from qcompiler.backends.triton.quantize_rowwise import _TINY, quantize_rows_into

__all__ = ["quantize_rowwise_dynamic", "quantize_rowwise_dynamic_indexed", "find_outlier_columns",
           "outlier_index"]


def _col_absmax_configs() -> list[triton.Config]:
    gpu = [make_config(BLOCK_M=64, BLOCK_K=256, num_warps=8, num_stages=1),
           make_config(BLOCK_M=128, BLOCK_K=128, num_warps=8, num_stages=1),
           make_config(BLOCK_M=32, BLOCK_K=256, num_warps=4, num_stages=1)]
    return pick_configs(gpu, make_config(BLOCK_M=64, BLOCK_K=256, num_warps=4, num_stages=1))


@triton.autotune(configs=_col_absmax_configs(), key=["K"], reset_to_zero=["colmax_ptr"])
@triton.jit
def _col_absmax_kernel(x_ptr, colmax_ptr, M, K, stride_xm, stride_xk,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
    tl.atomic_max(colmax_ptr + offs_k, tl.max(tl.abs(x.to(tl.float32)), axis=0), mask=k_ok)


@triton.jit
def _outlier_columns_kernel(colmax_ptr, mask_ptr, idx_ptr, cnt_ptr, K, threshold,
                            BLOCK_K: tl.constexpr):
    # One program: K / BLOCK_K steps of a running prefix sum, a few microseconds for K = 8192.
    cnt = 0
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        is_out = (tl.load(colmax_ptr + offs_k, mask=k_ok, other=0.0) > threshold) & k_ok
        flag = is_out.to(tl.int32)
        tl.store(mask_ptr + offs_k, flag.to(tl.int8), mask=k_ok)
        pos = cnt + tl.cumsum(flag, axis=0) - 1
        tl.store(idx_ptr + pos, offs_k, mask=is_out)
        cnt += tl.sum(flag, axis=0)
    tl.store(cnt_ptr, cnt)


_COL_ABSMAX = TunedLauncher(_col_absmax_kernel, "quantize_rowwise_dynamic.col_absmax")


def find_outlier_columns(x2: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """``x2 [M, K]`` -> ``(mask int8 [K], idx int32 [K] (first cnt valid), cnt int32 [1])``."""
    m, k = x2.shape
    colmax = torch.zeros(k, dtype=torch.float32, device=x2.device)
    if m:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_K"]))  # noqa: E731
        _COL_ABSMAX((k, x2.dtype), grid, x2, colmax, m, k, x2.stride(0), x2.stride(1))
    return outlier_index(colmax, threshold)


def outlier_index(colmax: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Mask and compacted index list of the columns whose ``colmax`` exceeds ``threshold``."""
    k = colmax.shape[0]
    mask = torch.empty(k, dtype=torch.int8, device=colmax.device)
    idx = torch.empty(k, dtype=torch.int32, device=colmax.device)
    cnt = torch.empty(1, dtype=torch.int32, device=colmax.device)
    _outlier_columns_kernel[(1,)](colmax, mask, idx, cnt, k, float(threshold), BLOCK_K=1024,
                                  num_warps=4)
    return mask, idx, cnt


def quantize_rowwise_dynamic(x: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Triton ``quantize_rowwise_dynamic``: same outputs as the reference op
    ``(x_int8, row_scale [..., 1], outlier_mask bool [K])``."""
    xq, scale, mask, _, _ = quantize_rowwise_dynamic_indexed(x, threshold)
    return xq, scale, mask


def quantize_rowwise_dynamic_indexed(x: Tensor, threshold: float):
    """As :func:`quantize_rowwise_dynamic`, plus the ``(idx, cnt)`` list the matmul reads."""
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"quantize_rowwise_dynamic: x must be a float tensor, got {x.dtype}")
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    xq = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if k == 0:
        scale.fill_(_TINY)
        mask = torch.zeros(0, dtype=torch.int8, device=x.device)
        idx, cnt = torch.zeros(0, dtype=torch.int32, device=x.device), torch.zeros(1, dtype=torch.int32, device=x.device)
    else:
        mask, idx, cnt = find_outlier_columns(x2, threshold)
        quantize_rows_into(x2, mask, None, xq, scale, None)
    return (xq.reshape(*lead, k), scale.reshape(*lead, 1), mask.view(torch.bool), idx, cnt)
