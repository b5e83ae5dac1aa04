"""Small-M (decode) path: ``y = x @ (wq * w_scale / 127).T + x[:, idx] @ w_out.T + bias``.

For M <= 16 a linear layer is bound by reading W: 2 bytes per weight in fp16, 1 in int8. Here X
stays in 16 bits (it is a few KB) and is *not* quantized; each program streams a ``[BLOCK_N, K]``
slab of int8 W, converts each tile to X's dtype in registers (exact: |q| <= 127), and
accumulates ``x @ w`` in float32 on the tensor cores; the per-channel scale is applied once in
the epilogue. So the only error left is W's quantization error (smaller than the int8 x int8
path's), and the outlier columns need no decomposition at all. In static mode the outlier columns
of ``wq`` are zero and their fp copy ``w_out [N, n]`` is added from the gathered ``x[:, idx]``;
in dynamic mode ``wq`` is complete and ``n = 0``.

BLOCK_M is fixed at 16 (the smallest ``tl.dot`` tile): rows past M are masked, which costs no
extra memory traffic.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import (TunedLauncher, interpreting, make_config,
                                               pick_configs)
from qcompiler.backends.triton.int8_linear import _outlier_dot

__all__ = ["weight_only_linear", "SMALL_M"]

# Rows up to which the weight-only path is used (and the activation quantization skipped).
SMALL_M = 16


def _weight_only_configs() -> list[triton.Config]:
    # Many programs (N / BLOCK_N >= #SMs for N = 4096) and deep pipelines keep enough bytes of W
    # in flight to saturate HBM; the dot itself is nearly free.
    c = make_config
    gpu = [c(BLOCK_N=32, BLOCK_K=256, num_warps=4, num_stages=4),
           c(BLOCK_N=16, BLOCK_K=512, num_warps=4, num_stages=4),
           c(BLOCK_N=32, BLOCK_K=512, num_warps=4, num_stages=3),
           c(BLOCK_N=16, BLOCK_K=1024, num_warps=4, num_stages=3),
           c(BLOCK_N=32, BLOCK_K=1024, num_warps=8, num_stages=3)]
    return pick_configs(gpu, c(BLOCK_N=64, BLOCK_K=128, num_warps=4))


@triton.autotune(configs=_weight_only_configs(), key=["N", "K", "HAS_OUTLIERS"])
@triton.heuristics(values={"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})
@triton.jit
def _weight_only_linear_kernel(
    x_ptr, wq_ptr, ws_ptr, idx_ptr, wo_ptr, b_ptr, y_ptr,
    M, N, K, n_out,
    stride_xm, stride_xk, stride_wqn, stride_wqk, stride_won, stride_wok, stride_wsn,
    stride_ym, stride_yn,
    HAS_OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    rn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = wq_ptr + rn[None, :] * stride_wqn + offs_k[:, None] * stride_wqk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
            w = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            x = tl.load(x_ptrs, mask=m_ok[:, None] & (offs_k[None, :] < k_left), other=0.0)
            w = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0)
        if DOT_F32:
            acc = _outlier_dot(x, w.to(tl.float32), acc, DOT_F32)
        else:
            acc = tl.dot(x, w.to(x.dtype), acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wqk

    ws = tl.load(ws_ptr + rn * stride_wsn)
    out = acc * (ws / 127.0)[None, :]
    if HAS_OUTLIERS:
        for o0 in range(0, n_out, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            o_ok = offs_o < n_out
            col = tl.load(idx_ptr + offs_o, mask=o_ok, other=0).to(tl.int64)
            xo = tl.load(x_ptr + offs_m[:, None] * stride_xm + col[None, :] * stride_xk,
                         mask=m_ok[:, None] & o_ok[None, :], other=0.0)
            wo = tl.load(wo_ptr + rn[None, :] * stride_won + offs_o[:, None] * stride_wok,
                         mask=o_ok[:, None], other=0.0)
            out = _outlier_dot(xo, wo.to(xo.dtype), out, DOT_F32)
    if HAS_BIAS:
        out += tl.load(b_ptr + rn).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n.to(tl.int64)[None, :] * stride_yn
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_n[None, :] < N))


_LAUNCH = TunedLauncher(_weight_only_linear_kernel, "weight_only_linear")


def weight_only_linear(x: Tensor, wq: Tensor, w_scale: Tensor, outlier_idx: Optional[Tensor],
                       w_outliers: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    """``x [..., K]`` (fp16/bf16, at most 16 rows in all) against int8 ``wq [N, K]``.

    ``outlier_idx`` / ``w_outliers [N, n]``: the static-mode fp copy of W's outlier columns (whose
    columns in ``wq`` are zero), or None. Output in ``x.dtype``.
    """
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"weight_only_linear: x must be float16/bfloat16, got {x.dtype}")
    if wq.dtype != torch.int8 or wq.dim() != 2 or wq.shape[1] != x.shape[-1]:
        raise ValueError(f"weight_only_linear: wq must be int8 [N, {x.shape[-1]}], "
                         f"got {wq.dtype} {tuple(wq.shape)}")
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m, n = x2.shape[0], wq.shape[0]
    if m > SMALL_M:
        raise ValueError(f"weight_only_linear handles at most {SMALL_M} rows, got {m}")
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y.reshape(*lead, n)
    n_out = outlier_idx.numel() if (outlier_idx is not None and w_outliers is not None) else 0
    ws = w_scale.reshape(-1)
    dummy = y
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _LAUNCH((n, k, n_out > 0, bias is not None, x.dtype), grid,
        x2, wq, ws, outlier_idx if n_out else dummy, w_outliers if n_out else dummy,
        bias if bias is not None else dummy, y,
        m, n, k, n_out,
        x2.stride(0), x2.stride(1), wq.stride(0), wq.stride(1),
        w_outliers.stride(0) if n_out else 0, w_outliers.stride(1) if n_out else 0,
        0 if ws.numel() == 1 else 1, y.stride(0), y.stride(1),
        HAS_OUTLIERS=n_out > 0, HAS_BIAS=bias is not None, DOT_F32=interpreting(),
        BLOCK_M=SMALL_M, BLOCK_O=16,
    )
    return y.reshape(*lead, n)
