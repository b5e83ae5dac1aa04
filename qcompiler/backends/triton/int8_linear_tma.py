"""The int8 x int8 GEMM of :mod:`.int8_linear` with TMA loads and a persistent tile loop (Hopper+).

Same math and the same epilogue (:func:`.int8_epilogue.int8_epilogue`) as ``_int8_linear_kernel``;
only the main loop differs: X and W tiles come through host-built tensor descriptors (the TMA unit
copies whole tiles into shared memory, out-of-range rows and columns read as zero), so the SM
issues no per-element address arithmetic, and with ``PERSISTENT`` one program per SM walks the
tiles (``tl.range(..., flatten=True)`` lets the compiler overlap a tile's epilogue with the next
tile's loads). Descriptors are kernel parameters (no device-side allocation): CUDA-graph safe.

TMA wants 16-byte aligned row strides and base pointers (K % 16 == 0 for int8):
:func:`tma_supported` checks, the dispatcher falls back to the pointer kernel otherwise.
The configs are tried one by one on the first call of a shape (a config that fails to compile on
this Triton/GPU is skipped, not fatal); the winner is cached per key.
"""

from __future__ import annotations

import os
from typing import Hashable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import interpreting
from qcompiler.backends.triton._tile_order import grouped_tile
from qcompiler.backends.triton.int8_epilogue import OUTLIERS_DENSE, OUTLIERS_GATHER, int8_epilogue

__all__ = ["tma_supported", "launch_int8_linear_tma", "tma_configs"]

try:  # triton >= 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton: the pointer kernel serves
    TensorDescriptor = None


def tma_configs() -> list[dict]:
    """Candidates (BLOCK_M/N/K, GROUP_M, PERSISTENT, num_warps, num_stages); 128-byte K rows."""
    if interpreting():
        return [dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=4, PERSISTENT=1, num_warps=4, num_stages=1)]
    out = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, GROUP_M=8, PERSISTENT=p, num_warps=8, num_stages=st)
           for bm, bn, st, p in ((128, 256, 3, 1), (128, 128, 4, 1), (128, 256, 3, 0), (256, 128, 3, 1))]
    return out[:1] if os.environ.get("QCOMPILER_TRITON_AUTOTUNE", "1") == "0" else out


def tma_supported(xq: Tensor, wq: Tensor) -> bool:
    """Whether both int8 operands can be read through TMA descriptors."""
    if TensorDescriptor is None:
        return False
    if not interpreting() and not (xq.is_cuda and torch.cuda.get_device_capability(xq.device) >= (9, 0)):
        return False
    m, k = xq.shape
    return (k % 16 == 0 and xq.stride(1) == 1 and wq.stride(1) == 1 and xq.stride(0) % 16 == 0
            and wq.stride(0) % 16 == 0 and xq.data_ptr() % 16 == 0 and wq.data_ptr() % 16 == 0)


@triton.jit
def _int8_linear_tma_kernel(
    xq_desc, wq_desc, xs_ptr, ws_ptr, xo_ptr, wo_ptr, idx_ptr, cnt_ptr, b_ptr, wq_ptr, y_ptr,
    M, N, K, n_out, num_programs,
    stride_xom, stride_xok, stride_won, stride_wok, stride_wqn, stride_wqk,
    stride_xsm, stride_wsn, stride_ym, stride_yn,
    OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_O: tl.constexpr, DOT_F32: tl.constexpr, PERSISTENT: tl.constexpr,
):
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), num_tiles, num_programs, flatten=PERSISTENT == 1):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for kk in range(k_tiles):
            a = xq_desc.load([off_m, kk * BLOCK_K])
            b = wq_desc.load([off_n, kk * BLOCK_K])
            acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        rm = (offs_m % M).to(tl.int64)
        rn = (offs_n % N).to(tl.int64)
        xs = tl.load(xs_ptr + rm * stride_xsm)
        out = int8_epilogue(acc, rm, rn, xs, ws_ptr, xo_ptr, wo_ptr, idx_ptr, cnt_ptr, b_ptr, wq_ptr, n_out,
                            stride_xom, stride_xok, stride_won, stride_wok, stride_wqn, stride_wqk,
                            stride_wsn, OUTLIERS, HAS_BIAS, BLOCK_O, DOT_F32)
        y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n.to(tl.int64)[None, :] * stride_yn
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


_BEST: dict[Hashable, dict] = {}
_SMS: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    i = device.index if device.index is not None else torch.cuda.current_device()
    if i not in _SMS:
        _SMS[i] = torch.cuda.get_device_properties(i).multi_processor_count
    return _SMS[i]


def _launch(cfg: dict, xq, x_scale, wq, w_scale, xo, wo, idx, cnt, bias, y, outliers, m, n, k):
    meta = dict(cfg)
    launch = dict(num_warps=meta.pop("num_warps"), num_stages=meta.pop("num_stages"))
    bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    programs = min(tiles, _num_sms(xq.device)) if meta["PERSISTENT"] else tiles
    dummy = y
    _int8_linear_tma_kernel[(programs,)](
        TensorDescriptor.from_tensor(xq, [bm, bk]), TensorDescriptor.from_tensor(wq, [bn, bk]),
        x_scale, w_scale, xo if outliers else dummy, wo if outliers == OUTLIERS_DENSE else dummy,
        idx if outliers == OUTLIERS_GATHER else dummy, cnt if outliers == OUTLIERS_GATHER else dummy,
        bias if bias is not None else dummy, wq, y,
        m, n, k, xo.shape[1] if outliers == OUTLIERS_DENSE else 0, programs,
        xo.stride(0) if outliers else 0, xo.stride(1) if outliers else 0,
        wo.stride(0) if outliers == OUTLIERS_DENSE else 0, wo.stride(1) if outliers == OUTLIERS_DENSE else 0,
        wq.stride(0), wq.stride(1),
        0 if x_scale.numel() == 1 else 1, 0 if w_scale.numel() == 1 else 1, y.stride(0), y.stride(1),
        OUTLIERS=outliers, HAS_BIAS=bias is not None, BLOCK_O=16, DOT_F32=interpreting(), **meta, **launch)


def launch_int8_linear_tma(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor,
                           xo: Optional[Tensor], wo: Optional[Tensor], idx: Optional[Tensor],
                           cnt: Optional[Tensor], bias: Optional[Tensor], y: Tensor, outliers: int,
                           config: Optional[dict] = None) -> Tensor:
    """``launch_int8_linear``'s contract on the TMA kernel (the caller checked :func:`tma_supported`);
    ``config`` forces one candidate of :func:`tma_configs` (benchmarks)."""
    m, k = xq.shape
    n = wq.shape[0]
    args = (xq, x_scale, wq, w_scale, xo, wo, idx, cnt, bias, y, outliers, m, n, k)
    if config is not None:
        _launch(config, *args)
        return y
    key = (triton.next_power_of_2(m), n, k, outliers, bias is not None, xo.dtype if outliers else None, y.dtype)
    best = _BEST.get(key)
    if best is None:
        best = _BEST[key] = _tune(args)
    _launch(best, *args)
    return y


def _tune(args) -> dict:
    """The fastest candidate that compiles and runs here (the only one under the interpreter)."""
    cands = tma_configs()
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
        raise RuntimeError("int8_linear_tma: no TMA config compiled on this device")
    return min(timed, key=lambda t: t[0])[1]
