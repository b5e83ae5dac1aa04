"""Small-M (decode) weight-only linear: ``y = x @ W.T + bias`` with W in 8 or 4 bits (UINT) or NF4,
unpacked in registers; x stays 16-bit. For M <= 16 the layer is bound by reading W, so the kernel
is built to keep HBM busy (the same kernel tiled over M as well is :func:`weight_only_matmul`, a
mixed-input GEMM for moderate M):

* **split-K**: the grid is ``(N / BLOCK_N, SPLIT_K)``; each program streams a ``[BLOCK_N, K /
  SPLIT_K]`` slab, several programs (and slabs of loads in flight) per SM. The partial sums go to a float32 workspace; the program that arrives last at a per-tile
  counter (one ``atomic_add``, acq_rel, after a CTA barrier: the grid-sync pattern) adds them up
  in split order (deterministic, no second kernel), writes y and resets the counter to 0: the
  counters are a persistent buffer (:mod:`._split_k_counters`), so no zero-fill launch either.
* **one scale per tile**: ``BLOCK_K`` divides the group size (or there is one group per row), so
  a tile's codes are turned into ``q - z`` (exact small integers) or NF4 levels, multiplied with x,
  and the group scale is applied once per row and tile. Group sizes no ``BLOCK_K`` divides (odd
  sizes) gather a scale per element instead (``PER_TILE=False``), correct but slower.
* **packed int4 without shuffles**: byte j holds k = 2j (low nibble) and 2j + 1 (high); x's tile
  is split into its even and odd columns (a register-only ``reshape`` + ``split``) and each
  nibble plane is multiplied with its half: two half-K products, no interleaving of W.
* **M = 1** (``DOT=False``): products on the CUDA cores into a ``[BLOCK_K/2, BLOCK_N]`` float32
  accumulator, reduced once at the end; **2 <= M <= 16** (``DOT=True``): ``tl.dot`` with
  ``BLOCK_M = 16`` (rows past M masked), W rounded to x's dtype (exact for ``q - z``).
* NF4 levels: on CUDA (``ASM=2``) from a 16-entry table in registers, read with byte permutes
  (:mod:`._nf4_register_table`), in x's dtype; elsewhere from a table in memory (through L1).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import TunedLauncher, interpreting
from qcompiler.backends.triton.weight_only_gemv_configs import (dot16_table_config, dot_configs, fma_configs,
                                                                gemm_configs, weight_kind)
from qcompiler.backends.triton._weight_operand import WeightOperand, code_value, group_scale, per_tile
from qcompiler.backends.triton._magic_dequant import magic_bytes_f16, magic_nibbles_f16
from qcompiler.backends.triton._nf4_register_table import nf4_nibbles_16_asm
from qcompiler.backends.triton._split_k_counters import split_k_counters
from qcompiler.backends.triton.int8_linear import _outlier_dot

__all__ = ["weight_only_gemv", "weight_only_matmul", "GEMV_MAX_M"]

# Rows up to which the GEMV is used (the dot path's BLOCK_M).
GEMV_MAX_M = 16


# Split-K partial sums are bounded: configs whose [SPLIT_K, M, N] float32 workspace would exceed
# this are dropped (vocabulary-size heads at larger M).
_SCRATCH_BYTES = 64 << 20


def _max_split(m_bucket: int, n: int) -> int:
    return max(1, _SCRATCH_BYTES // (4 * m_bucket * max(n, 1)))


def _prune(configs, named_args, **kwargs):
    """Per-tile scales where any candidate allows them; no more splits than K tiles or than the
    workspace holds."""
    a = {**named_args, **kwargs}
    ok = [c for c in configs if per_tile(a["GROUP"], a["G"], c.kwargs["BLOCK_K"])] or list(configs)
    cap = _max_split(a["M_BUCKET"], a["N"])
    fit = [c for c in ok if c.kwargs["SPLIT_K"] <= min(cap, max(1, -(-a["K"] // c.kwargs["BLOCK_K"])))]
    return fit or [c for c in ok if c.kwargs["SPLIT_K"] == 1] or ok


_HEURISTICS = {
    "PER_TILE": lambda a: per_tile(a["GROUP"], a["G"], a["BLOCK_K"]),
    "EVEN_K": lambda a: a["KB"] % (a["BLOCK_K"] // a["PACK"]) == 0,
}


@triton.jit
def _store_out(out, b_ptr, y_ptr, rn, offs_m, offs_n, m_ok, n_ok, stride_ym, stride_yn,
               HAS_BIAS: tl.constexpr, x_ptr, idx_ptr, wo_ptr, n_out, stride_xm, stride_xk, stride_won, stride_wok,
               HAS_OUTLIERS: tl.constexpr, BLOCK_O: tl.constexpr, DOT: tl.constexpr, DOT_F32: tl.constexpr):
    if HAS_OUTLIERS:  # int8-outlier's fp16 columns: x[:, idx] @ w_out.T, once per output tile
        for o0 in range(0, n_out, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            o_ok = offs_o < n_out
            col = tl.load(idx_ptr + offs_o, mask=o_ok, other=0).to(tl.int64)
            xo = tl.load(x_ptr + offs_m[:, None] * stride_xm + col[None, :] * stride_xk,
                         mask=m_ok[:, None] & o_ok[None, :], other=0.0)
            wo = tl.load(wo_ptr + rn.to(tl.int64)[None, :] * stride_won + offs_o[:, None] * stride_wok,
                         mask=o_ok[:, None], other=0.0)
            if DOT:
                out = _outlier_dot(xo, wo.to(xo.dtype), out, DOT_F32)
            else:
                out += tl.sum(tl.trans(xo.to(tl.float32)) * wo.to(tl.float32), axis=0)[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + rn).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n.to(tl.int64)[None, :] * stride_yn
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _load_tile(w_rows, x_ptr, s_ptr, z_ptr, dqs_ptr, t, offs_j, offs_k, offs_m, m_ok, g_rows, n_ok, dq_off,
               K, KB, GROUP, stride_xm, stride_xk,
               PACK: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, DOT: tl.constexpr,
               PER_TILE: tl.constexpr, HAS_ZEROS: tl.constexpr, DQ: tl.constexpr, DQ_BLOCK: tl.constexpr,
               ZERO: tl.constexpr, S_DIV: tl.constexpr):
    """K tile ``t``: W's bytes ``[BLOCK_K / PACK, BLOCK_N]`` (uint8), x's ``[BLOCK_M, BLOCK_K]`` (16-bit;
    for one row ``[BLOCK_K]`` float32) and, with ``PER_TILE``, the tile's scale and ``z + 2**23``
    per output row (``[BLOCK_N]``; zeros otherwise)."""
    jb = t * (BLOCK_K // PACK) + offs_j
    kk = t * BLOCK_K + offs_k
    if EVEN_K:
        b = tl.load(w_rows[None, :] + jb[:, None])
    else:
        b = tl.load(w_rows[None, :] + jb[:, None], mask=(jb < KB)[:, None], other=0)
    if DOT:
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=m_ok[:, None] & (kk < K)[None, :], other=0.0)
    else:
        x = tl.load(x_ptr + kk * stride_xk, mask=kk < K, other=0.0).to(tl.float32)
    zero = tl.zeros_like(g_rows).to(tl.float32)
    if PER_TILE:
        s, zf = group_scale(s_ptr, z_ptr, dqs_ptr, g_rows + (t * BLOCK_K) // GROUP, n_ok, dq_off,
                            HAS_ZEROS, DQ, DQ_BLOCK, ZERO)
        zf = zf + zero
        if S_DIV != 1:
            s = s / S_DIV
    else:
        s, zf = zero, zero
    return b, x, s, zf


# Ints that vary by call but not the code (M is masked, G / GROUP index the scales): one kernel for all.
@triton.jit(do_not_specialize=["M", "G", "GROUP", "M_BUCKET", "n_out"])
def _weight_only_gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, cb_ptr, cbh_ptr, dqs_ptr, dqo_ptr, b_ptr, y_ptr, part_ptr, lock_ptr,
    idx_ptr, wo_ptr, M, N, K, KB, G, GROUP, M_BUCKET, n_out,
    stride_xm, stride_xk, stride_ym, stride_yn, stride_won, stride_wok,
    FMT: tl.constexpr, PACK: tl.constexpr, ZERO: tl.constexpr, HAS_ZEROS: tl.constexpr,
    DQ: tl.constexpr, DQ_BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
    DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, PER_TILE: tl.constexpr, EVEN_K: tl.constexpr,
    FLIP: tl.constexpr, S_DIV: tl.constexpr, HAS_OUTLIERS: tl.constexpr, BLOCK_O: tl.constexpr,
    ASM: tl.constexpr, IS_F16: tl.constexpr,
):
    # fp16 magic numbers straight into the tensor-core operand (UINT codes, x in fp16, one scale a tile).
    # ASM: 0 = codes via float32 (code_value), 1 = fp16 magic in Triton ops, 2 = the same via prmt.
    MAGIC16: tl.constexpr = DOT and PER_TILE and FMT == 0 and IS_F16 and ASM > 0
    # NF4 on the tensor cores, levels from the register table (prmt: ASM=2, CUDA only).
    NF4_REG: tl.constexpr = DOT and PER_TILE and FMT == 1 and ASM == 2
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rn = offs_n % N  # wrapped rows keep the W loads unmasked; the store drops them
    offs_j = tl.arange(0, BLOCK_K // PACK)  # bytes of a W row in one tile
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rn.to(tl.int64) * KB
    g_rows = rn * G
    dq_off = 0.0
    if DQ:
        dq_off = tl.load(dqo_ptr)

    # This split's K tiles.
    n_tiles = tl.cdiv(KB, BLOCK_K // PACK)
    per_split = tl.cdiv(n_tiles, SPLIT_K)
    t_lo = pid_k * per_split
    t_hi = tl.minimum(t_lo + per_split, n_tiles)

    if DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc2 = tl.zeros((BLOCK_K // PACK, BLOCK_N), dtype=tl.float32)
        # Hand-pipelined: tile t + 1 is loading while tile t is computed (Triton pipelines only
        # loads that feed tl.dot). Indices are clamped, so the loads stay in bounds and unmasked.
        b_nx, x_nx, s_nx, zf_nx = _load_tile(
            w_rows, x_ptr, s_ptr, z_ptr, dqs_ptr, tl.minimum(t_lo, n_tiles - 1), offs_j, offs_k, offs_m,
            m_ok, g_rows, n_ok, dq_off, K, KB, GROUP, stride_xm, stride_xk,
            PACK, BLOCK_K, EVEN_K, DOT, PER_TILE, HAS_ZEROS, DQ, DQ_BLOCK, ZERO, S_DIV)
    for t in range(t_lo, t_hi):
        if DOT:
            b, x, s, zf = _load_tile(
                w_rows, x_ptr, s_ptr, z_ptr, dqs_ptr, t, offs_j, offs_k, offs_m, m_ok, g_rows, n_ok, dq_off,
                K, KB, GROUP, stride_xm, stride_xk, PACK, BLOCK_K, EVEN_K, DOT, PER_TILE, HAS_ZEROS, DQ,
                DQ_BLOCK, ZERO, S_DIV)
        else:
            b, x, s, zf = b_nx, x_nx, s_nx, zf_nx
            b_nx, x_nx, s_nx, zf_nx = _load_tile(
                w_rows, x_ptr, s_ptr, z_ptr, dqs_ptr, tl.minimum(t + 1, t_hi - 1), offs_j, offs_k, offs_m,
                m_ok, g_rows, n_ok, dq_off, K, KB, GROUP, stride_xm, stride_xk,
                PACK, BLOCK_K, EVEN_K, DOT, PER_TILE, HAS_ZEROS, DQ, DQ_BLOCK, ZERO, S_DIV)
        # x's tile split into even / odd columns for the two nibble planes.
        if PACK == 2:
            if DOT:
                x_lo, x_hi = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 2, 2)))
            else:
                x_lo, x_hi = tl.split(tl.reshape(x, (BLOCK_K // 2, 2)))
        else:
            x_lo = x
        bi = b.to(tl.int32)
        if FLIP:
            bi = bi ^ 0x80  # signed int8 codes -> q + 128
        if PACK == 2:
            c_lo = bi & 0xF
        else:
            c_lo = bi

        if PER_TILE:
            # One group for the whole tile: scale (and zero) per output row, applied afterwards.
            zf = zf[None, :]
            if MAGIC16:
                # (1024 + q) - (1024 + z) in fp16: exact integers, no conversion per weight.
                zh = (zf - 8388608.0 + 1024.0).to(tl.float16)
                if PACK == 2:
                    h_lo, h_hi = magic_nibbles_f16(b, ASM == 2)
                    part = _outlier_dot(x_lo, h_lo - zh, tl.zeros((BLOCK_M, BLOCK_N), tl.float32), DOT_F32)
                    part = _outlier_dot(x_hi, h_hi - zh, part, DOT_F32)
                else:
                    part = _outlier_dot(x_lo, magic_bytes_f16(b, ASM == 2, FLIP) - zh,
                                        tl.zeros((BLOCK_M, BLOCK_N), tl.float32), DOT_F32)
                acc += part * s[None, :]
            elif NF4_REG:
                # NF4 levels in x's dtype from a table in registers (prmt), no gather.
                h_lo, h_hi = nf4_nibbles_16_asm(b, IS_F16)
                part = _outlier_dot(x_lo, h_lo, tl.zeros((BLOCK_M, BLOCK_N), tl.float32), DOT_F32)
                part = _outlier_dot(x_hi, h_hi, part, DOT_F32)
                acc += part * s[None, :]
            elif DOT:
                # NF4 levels straight from the table in x's dtype (what .to(wdt) of the float32
                # level gives): no conversion, and a 2-byte gather Triton does not stage via smem.
                wdt = x_ptr.dtype.element_ty
                v_lo = code_value(c_lo, zf, cbh_ptr, FMT)
                part = _outlier_dot(x_lo, v_lo.to(wdt), tl.zeros((BLOCK_M, BLOCK_N), tl.float32), DOT_F32)
                if PACK == 2:
                    v_hi = code_value(bi >> 4, zf, cbh_ptr, FMT)
                    part = _outlier_dot(x_hi, v_hi.to(wdt), part, DOT_F32)
                acc += part * s[None, :]
            else:
                v_lo = code_value(c_lo, zf, cb_ptr, FMT)
                p = x_lo[:, None] * v_lo
                if PACK == 2:
                    p += x_hi[:, None] * code_value(bi >> 4, zf, cb_ptr, FMT)
                acc2 += p * s[None, :]
        else:
            # Groups change inside the tile: a scale per element (k = PACK * j and PACK * j + 1).
            k_lo = t * BLOCK_K + PACK * offs_j
            ok = (k_lo < K)[:, None]
            s, zf = group_scale(s_ptr, z_ptr, dqs_ptr, g_rows[None, :] + (k_lo // GROUP)[:, None], ok,
                                dq_off, HAS_ZEROS, DQ, DQ_BLOCK, ZERO)
            if S_DIV != 1:
                s = s / S_DIV
            w_lo = code_value(c_lo, zf, cb_ptr, FMT) * s
            if PACK == 2:
                ok = (k_lo + 1 < K)[:, None]
                s, zf = group_scale(s_ptr, z_ptr, dqs_ptr, g_rows[None, :] + ((k_lo + 1) // GROUP)[:, None],
                                    ok, dq_off, HAS_ZEROS, DQ, DQ_BLOCK, ZERO)
                w_hi = code_value(bi >> 4, zf, cb_ptr, FMT) * s
            if DOT:
                wdt = x_ptr.dtype.element_ty
                acc = _outlier_dot(x_lo, w_lo.to(wdt), acc, DOT_F32)
                if PACK == 2:
                    acc = _outlier_dot(x_hi, w_hi.to(wdt), acc, DOT_F32)
            else:
                p = x_lo[:, None] * w_lo
                if PACK == 2:
                    p += x_hi[:, None] * w_hi
                acc2 += p

    if DOT:
        out = acc
    else:
        out = tl.sum(acc2, axis=0)[None, :]
    if SPLIT_K == 1:
        _store_out(out, b_ptr, y_ptr, rn, offs_m, offs_n, m_ok, n_ok, stride_ym, stride_yn, HAS_BIAS,
                   x_ptr, idx_ptr, wo_ptr, n_out, stride_xm, stride_xk, stride_won, stride_wok,
                   HAS_OUTLIERS, BLOCK_O, DOT, DOT_F32)
    else:
        # Partial sums [SPLIT_K, M, N]; the last program of this N tile to arrive reduces them.
        mask = m_ok[:, None] & n_ok[None, :]
        p_off = offs_m[:, None] * N + offs_n[None, :]
        tl.store(part_ptr + pid_k * M * N + p_off, out, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        lock = lock_ptr + pid_m * tl.num_programs(0) + pid_n
        arrived = tl.atomic_add(lock, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s_i in tl.static_range(SPLIT_K):  # fixed order: the same bits on every run
                total += tl.load(part_ptr + s_i * M * N + p_off, mask=mask, other=0.0, cache_modifier=".cg")
            _store_out(total, b_ptr, y_ptr, rn, offs_m, offs_n, m_ok, n_ok, stride_ym, stride_yn, HAS_BIAS,
                       x_ptr, idx_ptr, wo_ptr, n_out, stride_xm, stride_xk, stride_won, stride_wok,
                       HAS_OUTLIERS, BLOCK_O, DOT, DOT_F32)
            tl.atomic_xchg(lock, 0)


_KEY = ["M_BUCKET", "N", "K", "GROUP", "FMT", "PACK", "HAS_ZEROS", "DQ", "FLIP", "HAS_OUTLIERS"]
_CONFIGS = {"fma": fma_configs, "dot": dot_configs, "gemm": gemm_configs}
_LAUNCH = {
    mode: TunedLauncher(triton.autotune(configs=make(), key=_KEY, prune_configs_by={"early_config_prune": _prune})(
        triton.heuristics(values=_HEURISTICS)(_weight_only_gemv_kernel)), f"weight_only_gemv.{mode}")
    for mode, make in _CONFIGS.items()
}


def _split_k_workspace(device: torch.device, parts: int, locks: int) -> tuple[Tensor, Tensor]:
    """This launch's float32 partial sums (uninitialised) and tile counters (:mod:`._split_k_counters`)."""
    return torch.empty(max(parts, 1), dtype=torch.float32, device=device), split_k_counters(device, locks)


_DOT16: dict[tuple, Optional[dict]] = {}


def _dot16_config(w: WeightOperand) -> Optional[dict]:
    """The measured tensor-core config at 16 rows for this layer shape (``weight_only_gemv_configs``)."""
    key = w.key()
    if key not in _DOT16:
        cfg = dot16_table_config(weight_kind(w.fmt, w.pack, w.group, w.groups, w.signed), w.n, w.k)
        _DOT16[key] = cfg if cfg is not None and per_tile(w.group, w.groups, cfg["BLOCK_K"]) else None
    return _DOT16[key]


def _m_bucket(m: int) -> int:
    return triton.next_power_of_2(max(m, 1))


def weight_only_gemv(x: Tensor, w: WeightOperand, bias: Optional[Tensor], outlier_idx: Optional[Tensor] = None,
                     w_outliers: Optional[Tensor] = None, *, dot: Optional[bool] = None,
                     config: Optional[dict] = None) -> Tensor:
    """``x [..., K]`` (float16/bfloat16, at most 16 rows) times the weight-only ``w`` (plus
    ``x[..., outlier_idx] @ w_outliers.T``: int8-outlier's fp16 columns); output in x's dtype.
    ``dot`` forces the tensor-core (True) or CUDA-core (False) form (default: CUDA cores for one
    row); ``config`` (``BLOCK_N``, ``BLOCK_K``, ``SPLIT_K``, ``ASM``, ``num_warps``, ``num_stages``)
    skips the autotuner - for tests and benchmarks."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else x.shape[:-1].numel()
    if rows > GEMV_MAX_M:
        raise ValueError(f"weight_only_gemv handles at most {GEMV_MAX_M} rows, got {rows}")
    use_dot = rows > 1 if dot is None else dot
    if not use_dot and rows > 1:
        raise ValueError("weight_only_gemv: the CUDA-core form (dot=False) takes one row")
    return _run("weight_only_gemv", x, w, bias, "dot" if use_dot else "fma", config, outlier_idx, w_outliers)


def weight_only_matmul(x: Tensor, w: WeightOperand, bias: Optional[Tensor], *,
                       config: Optional[dict] = None) -> Tensor:
    """Any number of rows, tiled over M too (``BLOCK_M`` 32..128): a mixed-input GEMM on the tensor
    cores with the same unpacking and split-K reduction. ``config`` as for :func:`weight_only_gemv`,
    plus ``BLOCK_M``."""
    return _run("weight_only_matmul", x, w, bias, "gemm", config)


def _run(what: str, x: Tensor, w: WeightOperand, bias: Optional[Tensor], mode: str,
         config: Optional[dict], outlier_idx: Optional[Tensor] = None, w_outliers: Optional[Tensor] = None) -> Tensor:
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{what}: x must be float16/bfloat16, got {x.dtype}")
    k, n = x.shape[-1], w.n
    if k != w.k:
        raise ValueError(f"{what}: x has K={k}, the weight K={w.k}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y.reshape(*lead, n)
    if bias is not None and (bias.numel() != n or bias.device != x.device):
        raise ValueError(f"{what}: bias must have {n} values on {x.device}, got {tuple(bias.shape)}")
    if k == 0:  # nothing to stream; the kernels assume at least one K tile
        y.zero_()
        return (y + bias.to(y.dtype) if bias is not None else y).reshape(*lead, n)
    kb, mb = w.qweight.shape[1], _m_bucket(m)
    if config is None and mode == "dot" and mb == GEMV_MAX_M:
        config = _dot16_config(w)  # the measured config of a known layer shape, else autotune
    splits = config["SPLIT_K"] if config is not None else min(
        _max_split(mb, n), max(c.kwargs["SPLIT_K"] for c in _LAUNCH[mode].autotuner.configs))
    if splits > 1:
        part, lock = _split_k_workspace(x.device, splits * m * n, triton.cdiv(m, 16) * triton.cdiv(n, 8))
    else:  # no split: the kernel never touches them
        part, lock = y, y
    n_out = outlier_idx.numel() if (outlier_idx is not None and w_outliers is not None) else 0
    if n_out and tuple(w_outliers.shape) != (n, n_out):
        raise ValueError(f"{what}: w_outliers must be [{n}, {n_out}], got {tuple(w_outliers.shape)}")
    args = (x2, *w.args(y, x.dtype), bias if bias is not None else y, y, part, lock,
            outlier_idx if n_out else y, w_outliers if n_out else y,
            m, n, k, kb, w.groups, w.group, mb, n_out, x2.stride(0), x2.stride(1), y.stride(0), y.stride(1),
            w_outliers.stride(0) if n_out else 0, w_outliers.stride(1) if n_out else 0)
    meta = dict(**w.meta(), HAS_BIAS=bias is not None, DOT=mode != "fma", DOT_F32=interpreting(),
                FLIP=w.signed, S_DIV=w.scale_div, HAS_OUTLIERS=n_out > 0, BLOCK_O=16,
                IS_F16=x.dtype == torch.float16)
    if mode != "gemm":
        meta["BLOCK_M"] = GEMV_MAX_M if mode == "dot" else 1
    grid = lambda c: (triton.cdiv(n, c["BLOCK_N"]), c["SPLIT_K"], triton.cdiv(m, c["BLOCK_M"]))  # noqa: E731
    if config is not None:
        cfg = dict(config)
        cfg.setdefault("ASM", 0)
        launch = dict(num_warps=cfg.pop("num_warps", 4), num_stages=cfg.pop("num_stages", 3))
        named = {"GROUP": w.group, "G": w.groups, "KB": kb, "PACK": w.pack, **cfg}
        cfg.update({name: fn(named) for name, fn in _HEURISTICS.items()})
        _weight_only_gemv_kernel[grid({**meta, **cfg})](*args, **meta, **cfg, **launch)
    else:  # M_BUCKET only keys the autotuner (one tuning per power-of-two row count)
        _LAUNCH[mode]((mb, x.dtype, bias is not None, n_out > 0, *w.key()), lambda c: grid({**meta, **c}), *args,
                      **meta)
    return y.reshape(*lead, n)
