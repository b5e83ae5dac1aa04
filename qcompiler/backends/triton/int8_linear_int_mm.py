"""The int8 GEMM at large M through cuBLASLt (``torch._int_mm``) plus one Triton epilogue kernel.

``torch._int_mm(xq, wq.t())`` writes the exact int32 product ``[M, N]`` (cuBLASLt's int8 IMMA
kernels; ``wq [N, K]`` row-major is already the column-major ``[K, N]`` operand it wants, so no
weight copy is made); then :func:`_int8_epilogue_kernel` reads it once and applies the same
:func:`.int8_epilogue.int8_epilogue` as the Triton GEMM (row ⊗ column scales, the 16-bit outlier
product, the bias) and writes X's dtype. The int32 temporary (4 bytes per output element) is
allocated by ``_int_mm`` per call and freed after it: CUDA-graph safe, no cached workspace.

Same int32 accumulator, same epilogue function: the output matches the Triton GEMM's (the outlier
``tl.dot`` may round its last bit differently between tile shapes).

Whether it runs is :mod:`.int8_gemm_engine`'s choice; ``_int_mm``'s own limits (M > 16, K and N
multiples of 8) are :func:`int_mm_supported`.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import TunedLauncher, interpreting, make_config, pick_configs
from qcompiler.backends.triton.int8_epilogue import OUTLIERS_DENSE, OUTLIERS_GATHER, int8_epilogue

__all__ = ["int_mm_supported", "launch_int8_linear_int_mm"]

def int_mm_supported(xq: Tensor, wq: Tensor) -> bool:
    """Whether ``torch._int_mm(xq, wq.t())`` accepts these 2-D operands (its checks, made here so a
    shape it refuses falls back to the Triton GEMM instead of raising)."""
    m, k = xq.shape
    n = wq.shape[0]
    return (m > 16 and k > 0 and k % 8 == 0 and n % 8 == 0 and xq.stride(1) == 1 and wq.stride(1) == 1
            and xq.stride(0) == k and wq.stride(0) == k)


def _epilogue_configs() -> list[triton.Config]:
    # Memory-bound (int32 in, 16-bit out): mid-size tiles, many programs in flight.
    c = make_config
    gpu = [c(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=1),
           c(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=1),
           c(BLOCK_M=32, BLOCK_N=256, num_warps=4, num_stages=1)]
    return pick_configs(gpu, c(BLOCK_M=32, BLOCK_N=128, num_warps=4))


@triton.autotune(configs=_epilogue_configs(), key=["N", "OUTLIERS"])
@triton.jit
def _int8_epilogue_kernel(
    acc_ptr, xs_ptr, ws_ptr, xo_ptr, wo_ptr, idx_ptr, cnt_ptr, b_ptr, wq_ptr, y_ptr,
    M, N, n_out,
    stride_am, stride_xom, stride_xok, stride_won, stride_wok, stride_wqn, stride_wqk,
    stride_xsm, stride_wsn, stride_ym,
    OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_O: tl.constexpr, DOT_F32: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Wrapped like the GEMM's, so int8_epilogue's unmasked loads stay in range; the store masks.
    rm = (offs_m % M).to(tl.int64)
    rn = (offs_n % N).to(tl.int64)
    acc = tl.load(acc_ptr + rm[:, None] * stride_am + rn[None, :])
    xs = tl.load(xs_ptr + rm * stride_xsm)
    out = int8_epilogue(acc, rm, rn, xs, ws_ptr, xo_ptr, wo_ptr, idx_ptr, cnt_ptr, b_ptr, wq_ptr, n_out,
                        stride_xom, stride_xok, stride_won, stride_wok, stride_wqn, stride_wqk,
                        stride_wsn, OUTLIERS, HAS_BIAS, BLOCK_O, DOT_F32)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n.to(tl.int64)[None, :]
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


_LAUNCH = TunedLauncher(_int8_epilogue_kernel, "int8_linear_int_mm")


def launch_int8_linear_int_mm(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor,
                              xo: Optional[Tensor], wo: Optional[Tensor], idx: Optional[Tensor],
                              cnt: Optional[Tensor], bias: Optional[Tensor], y: Tensor,
                              outliers: int) -> Tensor:
    """``launch_int8_linear``'s contract (2-D operands, ``y [M, N]`` preallocated, unit column
    stride) on ``_int_mm`` + the epilogue kernel; the caller checked :func:`int_mm_supported`."""
    m, _ = xq.shape
    n = wq.shape[0]
    acc = torch._int_mm(xq, wq.t())  # int32 [M, N]; wq.t() is a view (column-major [K, N])
    n_out = xo.shape[1] if outliers == OUTLIERS_DENSE else 0
    dummy = y
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"]))  # noqa: E731
    key = (n, outliers, bias is not None, xo.dtype if outliers else None, y.dtype)
    _LAUNCH(key, grid,
        acc, x_scale, w_scale, xo if outliers else dummy, wo if outliers == OUTLIERS_DENSE else dummy,
        idx if outliers == OUTLIERS_GATHER else dummy, cnt if outliers == OUTLIERS_GATHER else dummy,
        bias if bias is not None else dummy, wq, y,
        m, n, n_out,
        acc.stride(0), xo.stride(0) if outliers else 0, xo.stride(1) if outliers else 0,
        wo.stride(0) if outliers == OUTLIERS_DENSE else 0, wo.stride(1) if outliers == OUTLIERS_DENSE else 0,
        wq.stride(0), wq.stride(1),
        0 if x_scale.numel() == 1 else 1, 0 if w_scale.numel() == 1 else 1, y.stride(0),
        OUTLIERS=outliers, HAS_BIAS=bias is not None, BLOCK_O=16, DOT_F32=interpreting(),
    )
    return y
