"""Large-M weight-only path, part one: a weight-only W (UINT 8/4-bit or NF4) dequantized to a dense
``[N, K]`` float16/bfloat16 matrix, which ``F.linear`` (cuBLAS) then multiplies.

Why not only the mixed-input Triton GEMM (``weight_only_matmul``): at M = 2048, K = N = 4096 the
GEMM is compute-bound (~0.1 ms on an H100/H200 with cuBLAS); writing the 33 MB fp16 W costs
~0.01 ms more, while a Triton GEMM that unpacks int4 tiles for the tensor cores (no TMA, no warp
specialisation on triton 3.6) is expected to run below cuBLAS there. For moderate M the fused GEMM
reads 4x fewer bytes; ``benchmarks/bench_weight_only.py`` measures both.

Each program writes a ``[BLOCK_N, BLOCK_K]`` tile of W; 4-bit tiles are unpacked by joining the
low and high nibble planes (``tl.join`` + ``reshape``: k = 2j, 2j + 1 side by side), so the
stores stay contiguous.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import TunedLauncher, make_config, pick_configs
from qcompiler.backends.triton._weight_operand import WeightOperand, code_value, group_scale, per_tile

__all__ = ["dequantize_weight"]


def _configs() -> list[triton.Config]:
    # A copy-like kernel: 16-32 KB of output per program, BLOCK_K 64/128 for per-tile scales.
    c = make_config
    gpu = [c(BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=1),
           c(BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=1),
           c(BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=1),
           c(BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=1),
           c(BLOCK_N=32, BLOCK_K=256, num_warps=4, num_stages=1),
           c(BLOCK_N=16, BLOCK_K=512, num_warps=4, num_stages=1)]
    return pick_configs(gpu, c(BLOCK_N=32, BLOCK_K=64, num_warps=4))


def _prune(configs, named_args, **kwargs):
    a = {**named_args, **kwargs}
    return [c for c in configs if per_tile(a["GROUP"], a["G"], c.kwargs["BLOCK_K"])] or list(configs)


@triton.autotune(configs=_configs(), key=["N", "K", "GROUP", "FMT", "PACK", "HAS_ZEROS", "DQ"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.heuristics(values={"PER_TILE": lambda a: per_tile(a["GROUP"], a["G"], a["BLOCK_K"])})
@triton.jit
def _dequantize_weight_kernel(
    w_ptr, s_ptr, z_ptr, cb_ptr, dqs_ptr, dqo_ptr, out_ptr,
    N, K, KB, G, GROUP, stride_on,
    FMT: tl.constexpr, PACK: tl.constexpr, ZERO: tl.constexpr, HAS_ZEROS: tl.constexpr,
    DQ: tl.constexpr, DQ_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PER_TILE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    jb = pid_k * (BLOCK_K // PACK) + tl.arange(0, BLOCK_K // PACK)
    b = tl.load(w_ptr + offs_n.to(tl.int64)[:, None] * KB + jb[None, :],
                mask=n_ok[:, None] & (jb < KB)[None, :], other=0).to(tl.int32)
    dq_off = 0.0
    if DQ:
        dq_off = tl.load(dqo_ptr)
    g_rows = offs_n * G
    if PER_TILE:
        s, zf = group_scale(s_ptr, z_ptr, dqs_ptr, g_rows + (pid_k * BLOCK_K) // GROUP, n_ok, dq_off,
                            HAS_ZEROS, DQ, DQ_BLOCK, ZERO)
        if HAS_ZEROS:
            zf = zf[:, None]
        s = s[:, None]
        if PACK == 2:
            w = tl.join(code_value(b & 0xF, zf, cb_ptr, FMT) * s, code_value(b >> 4, zf, cb_ptr, FMT) * s)
        else:
            w = code_value(b, zf, cb_ptr, FMT) * s
    else:
        k_lo = PACK * jb
        ok = n_ok[:, None] & (k_lo < K)[None, :]
        s, zf = group_scale(s_ptr, z_ptr, dqs_ptr, g_rows[:, None] + (k_lo // GROUP)[None, :], ok, dq_off,
                            HAS_ZEROS, DQ, DQ_BLOCK, ZERO)
        if PACK == 2:
            w_lo = code_value(b & 0xF, zf, cb_ptr, FMT) * s
            ok = n_ok[:, None] & (k_lo + 1 < K)[None, :]
            s, zf = group_scale(s_ptr, z_ptr, dqs_ptr, g_rows[:, None] + ((k_lo + 1) // GROUP)[None, :], ok,
                                dq_off, HAS_ZEROS, DQ, DQ_BLOCK, ZERO)
            w = tl.join(w_lo, code_value(b >> 4, zf, cb_ptr, FMT) * s)
        else:
            w = code_value(b, zf, cb_ptr, FMT) * s
    if PACK == 2:
        w = tl.reshape(w, (BLOCK_N, BLOCK_K))  # [.., j, 2] -> [.., 2j + i]: k order
    kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    out_ptrs = out_ptr + offs_n.to(tl.int64)[:, None] * stride_on + kk[None, :]
    tl.store(out_ptrs, w.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & (kk < K)[None, :])


_LAUNCH = TunedLauncher(_dequantize_weight_kernel, "dequantize_weight")


def dequantize_weight(w: WeightOperand, dtype: torch.dtype, out: Optional[Tensor] = None) -> Tensor:
    """The dense ``[N, K]`` weight in ``dtype`` (float16/bfloat16): ``(q - z) * s`` or
    ``NF4_CODEBOOK[q] * absmax``, computed in float32 and rounded once. ``out``: a ``[N, K]``
    tensor of ``dtype`` with unit column stride to write into (e.g. a reused chunk buffer)."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"dequantize_weight: dtype must be float16/bfloat16, got {dtype}")
    if out is None:
        out = torch.empty((w.n, w.k), dtype=dtype, device=w.qweight.device)
    elif out.dtype != dtype or tuple(out.shape) != (w.n, w.k) or (out.numel() and out.stride(1) != 1):
        raise ValueError(f"dequantize_weight: out must be {dtype} [{w.n}, {w.k}] with unit column stride, "
                         f"got {out.dtype} {tuple(out.shape)} strides {out.stride()}")
    if out.numel() == 0:
        return out
    kb = w.qweight.shape[1]
    grid = lambda c: (triton.cdiv(w.n, c["BLOCK_N"]), triton.cdiv(kb, c["BLOCK_K"] // w.pack))  # noqa: E731
    _LAUNCH((dtype, *w.key()), grid, *w.args(out), out, w.n, w.k, kb, w.groups, w.group, out.stride(0),
            **w.meta())
    return out
