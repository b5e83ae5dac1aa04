"""Row scales of ``quantize_rowwise`` without the quantization: ``max |x|`` over each row's
non-outlier columns, floored at 1e-12, as float32 ``[M]``.

The prologue of the fused-quantization GEMM (:mod:`.int8_linear_fused_quant`): it reads X once
and writes only M floats; the GEMM then quantizes X's tiles in registers with these scales. The
values equal the ``row_scale`` output of :mod:`.quantize_rowwise` (a max is exact in any order).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import TunedLauncher, make_config, pick_configs

__all__ = ["row_absmax", "row_absmax_into"]


def _row_absmax_configs() -> list[triton.Config]:
    # Memory-bound: many small programs in flight; a row of a Llama layer is 8-28 KB of fp16.
    gpu = [make_config(BLOCK_M=2, BLOCK_K=2048, num_warps=4, num_stages=1),
           make_config(BLOCK_M=1, BLOCK_K=4096, num_warps=4, num_stages=1),
           make_config(BLOCK_M=4, BLOCK_K=1024, num_warps=4, num_stages=1),
           make_config(BLOCK_M=4, BLOCK_K=2048, num_warps=8, num_stages=1)]
    return pick_configs(gpu, make_config(BLOCK_M=16, BLOCK_K=512, num_warps=4, num_stages=1))


@triton.autotune(configs=_row_absmax_configs(), key=["K", "HAS_MASK"])
@triton.jit
def _row_absmax_kernel(x_ptr, mask_ptr, scale_ptr, M, K, stride_xm, stride_xk,
                       HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_ok = kk < K
        x = tl.abs(tl.load(x_rows + kk[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :],
                           other=0.0).to(tl.float32))
        if HAS_MASK:
            is_out = tl.load(mask_ptr + kk, mask=k_ok, other=0) != 0
            x = tl.where(is_out[None, :], 0.0, x)
        amax = tl.maximum(amax, tl.max(x, axis=1))
    tl.store(scale_ptr + offs_m, tl.maximum(amax, 1e-12), mask=row_ok)


_LAUNCH = TunedLauncher(_row_absmax_kernel, "row_absmax")


def row_absmax_into(x2: Tensor, mask: Optional[Tensor], scale: Tensor) -> None:
    """Launch on a 2-D ``x2 [M, K]`` (K > 0) into the preallocated float32 ``scale [M]``;
    ``mask``: ``[K]`` int8, 1 at the columns left out (outliers), or None."""
    m, k = x2.shape
    if m == 0:
        return
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)  # noqa: E731
    _LAUNCH((k, mask is not None, x2.dtype), grid,
            x2, mask if mask is not None else scale, scale, m, k, x2.stride(0), x2.stride(1),
            HAS_MASK=mask is not None)


def row_absmax(x: Tensor, outlier_mask: Optional[Tensor] = None) -> Tensor:
    """float32 ``[..., 1]`` row scales of ``x`` over the columns where ``outlier_mask`` is 0:
    the ``row_scale`` of ``qcompiler::quantize_rowwise``."""
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"row_absmax: x must be float16/bfloat16/float32, got {x.dtype}")
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    scale = torch.empty((x2.shape[0],), dtype=torch.float32, device=x.device)
    if k == 0:
        scale.fill_(1e-12)
    else:
        if outlier_mask is not None and outlier_mask.dtype == torch.bool:
            outlier_mask = outlier_mask.view(torch.int8)
        row_absmax_into(x2, outlier_mask, scale)
    return scale.reshape(*x.shape[:-1], 1)
