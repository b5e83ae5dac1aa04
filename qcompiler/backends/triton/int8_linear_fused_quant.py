"""int8 x int8 GEMM that quantizes the 16-bit X itself: no int8 copy of X is ever written.

``quantize_rowwise(x, idx)`` + ``int8_linear`` in two launches, the first one tiny:

1. :mod:`.row_absmax` writes the M row scales (max |x| over the non-outlier columns);
2. this kernel loads 16-bit X tiles, zeroes the outlier columns, quantizes them in registers
   (``round(x * 127/scale)``, half to even, as :mod:`._rounding` does everywhere) and feeds them
   to the int8 ``tl.dot`` (int32 accumulation); the epilogue (:mod:`.int8_epilogue`, the one the
   unfused GEMM uses) dequantizes, adds the outlier product (the outlier columns read straight
   from X) and the bias.

The int8 codes, the int32 accumulator and the epilogue's float32 operations are the unfused
path's, so the outputs are identical bit for bit. What it costs instead: every program of a row
block re-quantizes that block's X tiles (N / BLOCK_N times in all), ALU work next to the tensor
cores; what it saves: the int8 X round trip through memory (2 bytes per element of X) and a
launch. Measured on an H200 (``benchmarks/bench_int8_prefill.py``) the trade is a loss at every
Llama-3-8B shape, M = 512 and 2048 (1.4-2.6x the separate path's time), so ``act_quant=auto``
does not pick it; ``act_quant=fused`` (``lower-triton`` option) does.
"""

from __future__ import annotations

from typing import Optional

import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._tile_order import grouped_tile
from qcompiler.backends.triton._config import (TunedLauncher, interpreting, make_config,
                                               pick_configs)
from qcompiler.backends.triton._rounding import quantize_tile_fast
from qcompiler.backends.triton.int8_epilogue import (OUTLIERS_GATHER, OUTLIERS_GATHER_X,
                                                     OUTLIERS_NONE, int8_epilogue)

__all__ = ["launch_int8_linear_fused_quant"]


def _fused_quant_configs() -> list[triton.Config]:
    # Wide BLOCK_N: each X tile is quantized once per program, so N / BLOCK_N times in all.
    c = make_config
    # Registers: the int32 accumulator plus the X tile in float32 while it is quantized; BLOCK_K=64
    # with the 128x256 tile keeps both in ~200 registers a thread.
    gpu = [c(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
           c(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4),
           c(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
           c(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4)]
    return pick_configs(gpu, c(BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, GROUP_M=4, num_warps=4))


@triton.autotune(configs=_fused_quant_configs(), key=["M_BUCKET", "N", "K", "OUTLIERS", "HAS_MASK"])
@triton.heuristics(values={"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})
@triton.jit
def _int8_linear_fused_quant_kernel(
    x_ptr, xs_ptr, mask_ptr, wq_ptr, ws_ptr, wo_ptr, idx_ptr, cnt_ptr, b_ptr, y_ptr,
    M, N, K, n_out, M_BUCKET,
    stride_xm, stride_xk, stride_wqn, stride_wqk, stride_won, stride_wok,
    stride_wsn, stride_ym, stride_yn,
    OUTLIERS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_O: tl.constexpr, EVEN_K: tl.constexpr, DOT_F32: tl.constexpr, EXACT_MUL: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Wrapped rows/cols keep the main-loop loads unmasked; the store mask drops them.
    rm = (offs_m % M).to(tl.int64)
    rn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + rm[:, None] * stride_xm + offs_k[None, :] * stride_xk
    b_ptrs = wq_ptr + rn[None, :] * stride_wqn + offs_k[:, None] * stride_wqk
    m_ptrs = mask_ptr + offs_k

    xs = tl.load(xs_ptr + rm)
    # 127 * (1/scale), rounded like torch's `127.0 / scale` and like quantize_rowwise's kernel.
    inv = (tl.math.div_rn(1.0, xs) * 127.0)[:, None]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
            if HAS_MASK:
                keep = tl.load(m_ptrs) == 0
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
            if HAS_MASK:
                keep = tl.load(m_ptrs, mask=offs_k < k_left, other=0) == 0
        if HAS_MASK:
            a = tl.where(keep[None, :], a, 0.0)
        aq = quantize_tile_fast(a.to(tl.float32), inv, EXACT_MUL)
        acc = tl.dot(aq, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_xk
        b_ptrs += BLOCK_K * stride_wqk
        m_ptrs += BLOCK_K

    out = int8_epilogue(acc, rm, rn, xs, ws_ptr, x_ptr, wo_ptr, idx_ptr, cnt_ptr, b_ptr, wq_ptr, n_out,
                        stride_xm, stride_xk, stride_won, stride_wok, stride_wqn, stride_wqk,
                        stride_wsn, OUTLIERS, HAS_BIAS, BLOCK_O, DOT_F32)

    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n.to(tl.int64)[None, :] * stride_yn
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


_LAUNCH = TunedLauncher(_int8_linear_fused_quant_kernel, "int8_linear_fused_quant")


def launch_int8_linear_fused_quant(x2: Tensor, x_scale: Tensor, mask: Optional[Tensor], wq: Tensor,
                                   w_scale: Tensor, wo: Optional[Tensor], idx: Optional[Tensor],
                                   cnt: Optional[Tensor], bias: Optional[Tensor], y: Tensor,
                                   outliers: int) -> Tensor:
    """Launch on 2-D operands; ``y [M, N]`` preallocated, K > 0.

    ``x2 [M, K]``: the 16-bit X; ``x_scale [M]`` float32 (:func:`.row_absmax.row_absmax_into`);
    ``mask [K]`` int8 (1 = outlier column, zeroed before quantizing) or None. ``outliers``:
    ``OUTLIERS_NONE``; ``OUTLIERS_GATHER_X`` (columns ``idx`` of X times ``wo [N, n]``);
    ``OUTLIERS_GATHER`` (columns ``idx[:cnt[0]]`` of X and of ``wq``, dequantized).
    """
    m, k = x2.shape
    n = wq.shape[0]
    if m == 0 or n == 0:
        return y
    dummy = y  # never dereferenced: the constexpr flags compile those loads away
    gather_x = outliers == OUTLIERS_GATHER_X
    n_out = idx.numel() if gather_x else 0
    if gather_x and n_out == 0:
        outliers = OUTLIERS_NONE
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    key = (_m_bucket(m), n, k, outliers, mask is not None, bias is not None, x2.dtype, y.dtype)
    _LAUNCH(key, grid,
        x2, x_scale, mask if mask is not None else dummy, wq, w_scale,
        wo if outliers == OUTLIERS_GATHER_X else dummy,
        idx if outliers != OUTLIERS_NONE else dummy, cnt if outliers == OUTLIERS_GATHER else dummy,
        bias if bias is not None else dummy, y,
        m, n, k, n_out, _m_bucket(m),
        x2.stride(0), x2.stride(1), wq.stride(0), wq.stride(1),
        wo.stride(0) if outliers == OUTLIERS_GATHER_X else 0,
        wo.stride(1) if outliers == OUTLIERS_GATHER_X else 0,
        0 if w_scale.numel() == 1 else 1, y.stride(0), y.stride(1),
        OUTLIERS=outliers, HAS_MASK=mask is not None, HAS_BIAS=bias is not None, BLOCK_O=16,
        DOT_F32=interpreting(), EXACT_MUL=not interpreting(),
    )
    return y


def _m_bucket(m: int) -> int:
    # Autotune once per power-of-two M bucket rather than once per distinct M.
    return triton.next_power_of_2(max(m, 1))
