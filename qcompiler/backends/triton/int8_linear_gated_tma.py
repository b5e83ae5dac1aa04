"""The gate/up linear of a gated MLP and ``silu(gate) * up`` in one TMA int8 GEMM (Hopper+).

With gate and up fused into one linear (sibling fusion, W = ``[W_gate; W_up]``), a prompt's MLP
wrote ``[g | u]`` (``M x 2H`` 16-bit values), read it back to compute ``silu(g) * u`` and wrote
that (``M x H``): at M = 2048 of a Llama-3-8B layer (H = 14336) 235 MB of traffic. Here each
program computes an output tile of ``silu(g) * u`` directly: per K step it loads one X tile and
two W tiles (rows ``n`` of the gate half and ``H + n`` of the up half) into two int32
accumulators, runs the shared epilogue (:func:`.int8_epilogue.int8_epilogue`: scales, outlier
columns, bias) on each, and stores only :func:`.silu_mul.silu_mul_rounded` of the pair. The
gate and up values are the int8 GEMM's own bit for bit (an int32 sum does not depend on order),
and the product is rounded as the eager ops round it.

The main loop is :mod:`.int8_linear_tma`'s (TMA descriptors, persistent tile loop); the configs
are its tiles with ``BLOCK_N`` halved, since each program holds two accumulators.
"""

from __future__ import annotations

import os
from typing import Hashable, Optional

import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import interpreting
from qcompiler.backends.triton._tile_order import grouped_tile
from qcompiler.backends.triton.int8_epilogue import OUTLIERS_DENSE, int8_epilogue
from qcompiler.backends.triton.int8_linear_tma import TensorDescriptor, num_sms
from qcompiler.backends.triton.silu_mul import silu_mul_rounded

__all__ = ["gated_tma_configs", "launch_int8_gated_tma"]


def gated_tma_configs() -> list[dict]:
    """Candidates (BLOCK_M/N/K, GROUP_M, PERSISTENT, num_warps, num_stages); BLOCK_N per half."""
    if interpreting():
        return [dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64, GROUP_M=4, PERSISTENT=1, num_warps=4, num_stages=1)]
    out = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, GROUP_M=8, PERSISTENT=p, num_warps=8, num_stages=st)
           for bm, bn, st, p in ((128, 128, 3, 1), (128, 64, 4, 1), (128, 128, 3, 0), (256, 64, 3, 1))]
    return out[:1] if os.environ.get("QCOMPILER_TRITON_AUTOTUNE", "1") == "0" else out


@triton.jit
def _int8_gated_tma_kernel(
    xq_desc, wq_desc, xs_ptr, ws_ptr, xo_ptr, wo_ptr, b_ptr, y_ptr,
    M, H, K, n_out, num_programs,
    stride_xom, stride_xok, stride_won, stride_wok, stride_xsm, stride_wsn, stride_ym, stride_yn,
    OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr, EXACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_O: tl.constexpr, DOT_F32: tl.constexpr, PERSISTENT: tl.constexpr,
):
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(H, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_tiles, num_programs, flatten=PERSISTENT == 1):
        pid_m, pid_n = grouped_tile(tile, M, H, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for kk in range(tl.cdiv(K, BLOCK_K)):
            a = xq_desc.load([off_m, kk * BLOCK_K])
            b_g = wq_desc.load([off_n, kk * BLOCK_K])  # gate rows past H read up rows: never stored
            b_u = wq_desc.load([H + off_n, kk * BLOCK_K])
            acc_g = tl.dot(a, b_g.T, acc_g, out_dtype=tl.int32)
            acc_u = tl.dot(a, b_u.T, acc_u, out_dtype=tl.int32)
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        rm = (offs_m % M).to(tl.int64)
        rn = (offs_n % H).to(tl.int64)
        xs = tl.load(xs_ptr + rm * stride_xsm)
        g = int8_epilogue(acc_g, rm, rn, xs, ws_ptr, xo_ptr, wo_ptr, xo_ptr, xo_ptr, b_ptr, xo_ptr, n_out,
                          stride_xom, stride_xok, stride_won, stride_wok, 0, 0,
                          stride_wsn, OUTLIERS, HAS_BIAS, BLOCK_O, DOT_F32)
        u = int8_epilogue(acc_u, rm, rn + H, xs, ws_ptr, xo_ptr, wo_ptr, xo_ptr, xo_ptr, b_ptr, xo_ptr, n_out,
                          stride_xom, stride_xok, stride_won, stride_wok, 0, 0,
                          stride_wsn, OUTLIERS, HAS_BIAS, BLOCK_O, DOT_F32)
        out = silu_mul_rounded(g, u, y_ptr.dtype.element_ty, EXACT)
        y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n.to(tl.int64)[None, :] * stride_yn
        tl.store(y_ptrs, out, mask=(offs_m[:, None] < M) & (offs_n[None, :] < H))


_BEST: dict[Hashable, dict] = {}


def _launch(cfg: dict, xq, x_scale, wq, w_scale, xo, wo, bias, y, m, h, k):
    meta = dict(cfg)
    launch = dict(num_warps=meta.pop("num_warps"), num_stages=meta.pop("num_stages"))
    bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
    tiles = triton.cdiv(m, bm) * triton.cdiv(h, bn)
    programs = min(tiles, num_sms(xq.device)) if meta["PERSISTENT"] else tiles
    outliers = xo is not None
    dummy = y
    _int8_gated_tma_kernel[(programs,)](
        TensorDescriptor.from_tensor(xq, [bm, bk]), TensorDescriptor.from_tensor(wq, [bn, bk]),
        x_scale, w_scale, xo if outliers else dummy, wo if outliers else dummy,
        bias if bias is not None else dummy, y,
        m, h, k, xo.shape[1] if outliers else 0, programs,
        xo.stride(0) if outliers else 0, xo.stride(1) if outliers else 0,
        wo.stride(0) if outliers else 0, wo.stride(1) if outliers else 0,
        0 if x_scale.numel() == 1 else 1, 0 if w_scale.numel() == 1 else 1, y.stride(0), y.stride(1),
        OUTLIERS=OUTLIERS_DENSE if outliers else 0, HAS_BIAS=bias is not None, EXACT=not interpreting(),
        BLOCK_O=16, DOT_F32=interpreting(), **meta, **launch)


def launch_int8_gated_tma(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor, xo: Optional[Tensor],
                          wo: Optional[Tensor], bias: Optional[Tensor], y: Tensor,
                          config: Optional[dict] = None) -> Tensor:
    """``y [M, H] = silu_mul(int8_linear(xq, ..., wq [2H, K], ...))`` for 2-D operands that pass
    :func:`.int8_linear_tma.tma_supported`; ``xo`` / ``wo``: the dense outlier columns or None;
    ``config`` forces one candidate of :func:`gated_tma_configs` (benchmarks)."""
    m, k = xq.shape
    h = y.shape[1]
    args = (xq, x_scale, wq, w_scale, xo, wo, bias, y, m, h, k)
    if config is not None:
        _launch(config, *args)
        return y
    key = (triton.next_power_of_2(m), h, k, xo is not None, bias is not None, xo.dtype if xo is not None else None,
           y.dtype)
    best = _BEST.get(key)
    if best is None:
        best = _BEST[key] = _tune(args)
    _launch(best, *args)
    return y


def _tune(args) -> dict:
    """The fastest candidate that compiles and runs here (the only one under the interpreter)."""
    cands = gated_tma_configs()
    if len(cands) == 1:
        return cands[0]
    timed = []
    for cfg in cands:
        try:
            ms = triton.testing.do_bench(lambda: _launch(cfg, *args), warmup=3, rep=15, return_mode="median")
        except Exception:  # noqa: BLE001 - a config this Triton/GPU cannot build is just not a candidate
            continue
        timed.append((ms, cfg))
    if not timed:
        raise RuntimeError("int8_linear_gated_tma: no TMA config compiled on this device")
    return min(timed, key=lambda t: t[0])[1]
