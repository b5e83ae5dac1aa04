"""``qcompiler::int8_linear``: int8 x int8 -> int32 GEMM with the whole epilogue fused.

One launch computes ``y = (xq @ wq.T) * (x_scale ⊗ w_scale) / 127² + x_out @ w_out.T + bias``:
the int32 accumulator lives in registers only, is turned into float32 with the row ⊗ column
scales, and then serves as the accumulator of a small 16-bit ``tl.dot`` loop over the outlier
columns (padded to ``BLOCK_O = 16``), so the decomposition costs no second pass over Y. The
epilogue is :func:`.int8_epilogue.int8_epilogue`, shared with the fused-quantization GEMM.

The same kernel serves the dynamic-outlier op (``OUTLIERS == 2``): there the outlier columns are
gathered from the fp16/bf16 X and from the int8 W (dequantized in registers) through an index
list whose length is read on the device, so no host sync is needed.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._tile_order import grouped_tile
from qcompiler.backends.triton._config import (TunedLauncher, interpreting, make_config,
                                               pick_configs)
from qcompiler.backends.triton.int8_epilogue import (OUTLIERS_DENSE, OUTLIERS_GATHER, OUTLIERS_NONE,
                                                     int8_epilogue)
from qcompiler.backends.triton.int8_gemm_engine import GEMM_AUTO, GEMM_INT_MM, GEMM_TMA, GEMM_TRITON, pick_gemm
from qcompiler.backends.triton.int8_linear_int_mm import launch_int8_linear_int_mm
from qcompiler.backends.triton.int8_linear_tma import launch_int8_linear_tma
# The weight-only kernels import the 16-bit dot from here.
from qcompiler.backends.triton.int8_epilogue import outlier_dot as _outlier_dot  # noqa: F401

__all__ = ["int8_linear", "launch_int8_linear", "OUTLIERS_NONE", "OUTLIERS_DENSE",
           "OUTLIERS_GATHER"]



def _int8_linear_configs() -> list[triton.Config]:
    # Hopper int8 wgmma: 128-wide tiles, BLOCK_K=128 (128 B rows), 3-4 stages fit in 227 KB smem.
    c = make_config
    gpu = [c(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4),
           c(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
           c(BLOCK_M=256, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
           c(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4)]
    # Interpreter: few, large programs (its cost is per op, not per element); still < K, N of tests.
    return pick_configs(gpu, c(BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, GROUP_M=4, num_warps=4))


def _m_bucket(m: int) -> int:
    # Autotune once per power-of-two M bucket rather than once per distinct M.
    return triton.next_power_of_2(max(m, 1))


@triton.autotune(configs=_int8_linear_configs(), key=["M_BUCKET", "N", "K", "OUTLIERS"])
@triton.heuristics(values={"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})
@triton.jit
def _int8_linear_kernel(
    xq_ptr, xs_ptr, wq_ptr, ws_ptr, xo_ptr, wo_ptr, idx_ptr, cnt_ptr, b_ptr, y_ptr,
    M, N, K, n_out, M_BUCKET,
    stride_xqm, stride_xqk, stride_wqn, stride_wqk,
    stride_xom, stride_xok, stride_won, stride_wok,
    stride_xsm, stride_wsn, stride_ym, stride_yn,
    OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_O: tl.constexpr, EVEN_K: tl.constexpr, DOT_F32: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Wrapped rows/cols keep the main-loop loads unmasked; the store mask drops them.
    rm = (offs_m % M).to(tl.int64)
    rn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = xq_ptr + rm[:, None] * stride_xqm + offs_k[None, :] * stride_xqk
    b_ptrs = wq_ptr + rn[None, :] * stride_wqn + offs_k[:, None] * stride_wqk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_xqk
        b_ptrs += BLOCK_K * stride_wqk

    xs = tl.load(xs_ptr + rm * stride_xsm)
    out = int8_epilogue(acc, rm, rn, xs, ws_ptr, xo_ptr, wo_ptr, idx_ptr, cnt_ptr, b_ptr, wq_ptr, n_out,
                        stride_xom, stride_xok, stride_won, stride_wok, stride_wqn, stride_wqk,
                        stride_wsn, OUTLIERS, HAS_BIAS, BLOCK_O, DOT_F32)

    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n.to(tl.int64)[None, :] * stride_yn
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


_LAUNCH = TunedLauncher(_int8_linear_kernel, "int8_linear")


def launch_int8_linear(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor,
                       xo: Optional[Tensor], wo: Optional[Tensor], idx: Optional[Tensor],
                       cnt: Optional[Tensor], bias: Optional[Tensor], y: Tensor,
                       outliers: int, gemm: int = GEMM_AUTO) -> Tensor:
    """Launch on 2-D operands; ``y [M, N]`` preallocated.

    ``outliers``: ``OUTLIERS_DENSE`` uses ``xo [M, n]``/``wo [N, n]``; ``OUTLIERS_GATHER`` uses
    ``xo`` = the 16-bit X ``[M, K]`` and the columns ``idx[:cnt[0]]`` of it and of ``wq``.
    ``gemm``: an engine of :mod:`.int8_gemm_engine` (``GEMM_AUTO``: by M; ``GEMM_TRITON``: this
    kernel; ``GEMM_INT_MM``: cuBLASLt + the epilogue kernel; ``GEMM_TMA``: the TMA kernel).
    """
    m, k = xq.shape
    n = wq.shape[0]
    if m == 0 or n == 0:
        return y
    if k == 0:  # no int8 part at all: only the (empty) outlier product and the bias remain
        y.zero_()
        if bias is not None:
            y += bias.to(y.dtype)
        return y
    engine = pick_gemm(gemm, xq, wq) if y.stride(1) == 1 else GEMM_TRITON
    if engine == GEMM_INT_MM:
        return launch_int8_linear_int_mm(xq, x_scale, wq, w_scale, xo, wo, idx, cnt, bias, y, outliers)
    if engine == GEMM_TMA:
        return launch_int8_linear_tma(xq, x_scale, wq, w_scale, xo, wo, idx, cnt, bias, y, outliers)
    n_out = xo.shape[1] if outliers == OUTLIERS_DENSE else 0
    dummy = y
    xs_stride = 0 if x_scale.numel() == 1 else 1
    ws_stride = 0 if w_scale.numel() == 1 else 1
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    key = (_m_bucket(m), n, k, outliers, bias is not None, xo.dtype if outliers else None, y.dtype)
    _LAUNCH(key, grid,
        xq, x_scale, wq, w_scale,
        xo if outliers else dummy, wo if outliers == OUTLIERS_DENSE else dummy,
        idx if outliers == OUTLIERS_GATHER else dummy, cnt if outliers == OUTLIERS_GATHER else dummy,
        bias if bias is not None else dummy, y,
        m, n, k, n_out, _m_bucket(m),
        xq.stride(0), xq.stride(1), wq.stride(0), wq.stride(1),
        xo.stride(0) if outliers else 0, xo.stride(1) if outliers else 0,
        wo.stride(0) if outliers == OUTLIERS_DENSE else 0,
        wo.stride(1) if outliers == OUTLIERS_DENSE else 0,
        xs_stride, ws_stride, y.stride(0), y.stride(1),
        OUTLIERS=outliers, HAS_BIAS=bias is not None, BLOCK_O=16, DOT_F32=interpreting(),
    )
    return y


def _check_common(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor) -> None:
    if xq.dtype != torch.int8 or wq.dtype != torch.int8:
        raise TypeError(f"int8_linear: xq and wq must be int8, got {xq.dtype} and {wq.dtype}")
    if wq.dim() != 2 or wq.shape[1] != xq.shape[-1]:
        raise ValueError(f"int8_linear: wq {tuple(wq.shape)} does not match xq {tuple(xq.shape)}")
    if x_scale.dtype != torch.float32 or w_scale.dtype != torch.float32:
        raise TypeError("int8_linear: scales must be float32")
    rows = xq.numel() // max(xq.shape[-1], 1) if xq.shape[-1] else xq.shape[:-1].numel()
    if x_scale.numel() not in (1, rows) or w_scale.numel() not in (1, wq.shape[0]):
        raise ValueError(f"int8_linear: scale shapes {tuple(x_scale.shape)}, "
                         f"{tuple(w_scale.shape)} do not fit xq {tuple(xq.shape)}, wq {tuple(wq.shape)}")


def int8_linear(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor,
                x_outliers: Optional[Tensor], w_outliers: Optional[Tensor],
                bias: Optional[Tensor], out_dtype: torch.dtype, gemm: int = GEMM_AUTO) -> Tensor:
    """Triton ``int8_linear``: same semantics as ``torch.ops.qcompiler.int8_linear``; ``gemm`` as
    for :func:`launch_int8_linear`."""
    _check_common(xq, x_scale, wq, w_scale)
    k = xq.shape[-1]
    lead = xq.shape[:-1]
    n = wq.shape[0]
    xq2 = xq.reshape(-1, k)
    m = xq2.shape[0]
    y = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    use_out = x_outliers is not None and w_outliers is not None and x_outliers.shape[-1] > 0
    if use_out and x_outliers.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"int8_linear: x_outliers must be float16/bfloat16, got {x_outliers.dtype}")
    xo = x_outliers.reshape(m, -1) if use_out else None
    launch_int8_linear(xq2, x_scale.reshape(-1), wq, w_scale.reshape(-1), xo,
                       w_outliers if use_out else None, None, None, bias, y,
                       OUTLIERS_DENSE if use_out else OUTLIERS_NONE, gemm)
    return y.reshape(*lead, n)
