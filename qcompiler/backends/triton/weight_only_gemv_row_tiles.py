"""The K loop of the one-row GEMV (:mod:`.weight_only_gemv_row`), in two forms. Each sums
``x[k] * (q[n, k] - z[n, g]) * s[n, g]`` over the program's K tiles ``[t_lo, t_hi)`` and returns
``[BLOCK_N]`` float32 sums (unscaled when there is one group per row: the epilogue scales).

* :func:`f32_tiles`: every format, float32 arithmetic (magic-number dequantization, exact ``q - z``,
  FMA into float32). What the CPU interpreter runs.
* :func:`half2_tiles`: 4-bit UINT codes and a float16 x on CUDA (inline PTX). Why: the float32 form
  spends ~4 instructions per 4-bit weight (a PRMT, the ``- z`` FADD, the FMA and the group sum) and
  the H200's 4-bit GEMVs were bound by that, not by bytes (52% of copy bandwidth for the 8B gate/up
  layer). Here a byte's two codes go into the two halves of one register and stay paired: a PRMT
  (the byte into both 16-bit lanes), a LOP3 (``0x6400 | q0``, ``0x6400 | q1 << 4``: the floats
  ``1024 + q0``, ``1024 + 16 q1``), one HFMA2 with (1, 1/16) and ``-(1024 + z)``, ``-(64 + z)``
  (the exact ``q - z`` of both codes, zero point included) and one HFMA2 into a float16 pair of
  products with x's two values (x read as int32 pairs, 16 bytes a word: no converts). A 32-bit word
  (8 codes) is 4 x 4 of those, then its two lanes are converted and added in float32: ~2.4
  instructions per weight. **Tolerance**: four products per lane are summed in float16 before the float32 sum, about
  2 eps(fp16) of ``sum |x w|`` more than the float32 form. **Overflow**: a lane overflows only when
  |x| is in the thousands; the caller checks its sums and re-runs its tiles with the float32 form
  when any is not finite, so the answer never silently becomes inf.
"""

from __future__ import annotations

import triton
import triton.language as tl

from qcompiler.backends.triton._magic_dequant import magic_bytes_f32, magic_nibbles_f32
from qcompiler.backends.triton._nf4_register_table import nf4_nibbles_f32_asm

__all__ = ["f32_tiles", "half2_tiles", "group_scale"]


@triton.jit
def group_scale(s_ptr, dqs_ptr, dq_off, gidx, g_ok, DQ: tl.constexpr, DQ_BLOCK: tl.constexpr):
    """The float32 scale of groups ``gidx`` (double-quantized NF4 absmax decoded)."""
    if DQ:
        code = tl.load(s_ptr + gidx, mask=g_ok, other=0).to(tl.float32)
        s = code * tl.load(dqs_ptr + gidx // DQ_BLOCK, mask=g_ok, other=0.0) / 127.0 + dq_off
    else:
        s = tl.load(s_ptr + gidx, mask=g_ok, other=0.0)
    return s


@triton.jit
def _per_byte(zf, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, GB: tl.constexpr, NG: tl.constexpr,
              EXPAND: tl.constexpr):
    """A per-group ``[BLOCK_N, NG]`` value spread over the tile's ``BLOCK_KB`` columns (GB per group),
    or left to broadcast."""
    res = zf  # one return statement: triton 3.6 type-checks returns of both static branches
    if EXPAND:
        res = tl.reshape(tl.broadcast_to(zf[:, :, None], (BLOCK_N, NG, GB)), (BLOCK_N, BLOCK_KB))
    return res


@triton.jit
def _group_sums(p, BLOCK_N: tl.constexpr, WIDTH: tl.constexpr, GW: tl.constexpr):
    """``[BLOCK_N, WIDTH]`` -> per-group sums ``[BLOCK_N, WIDTH / GW]`` (GW columns a group)."""
    if GW == WIDTH:
        return tl.sum(p, axis=1)[:, None]
    return tl.sum(tl.reshape(p, (BLOCK_N, WIDTH // GW, GW)), axis=2)


@triton.jit
def f32_tiles(x_ptr, w_rows, s_ptr, z_ptr, cb_ptr, dqs_ptr, dq_off, rn, t_lo, t_hi, K, KB, G, stride_xk,
              FMT: tl.constexpr, PACK: tl.constexpr, ZERO: tl.constexpr, HAS_ZEROS: tl.constexpr,
              DQ: tl.constexpr, DQ_BLOCK: tl.constexpr, FLIP: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_KB: tl.constexpr, ASM: tl.constexpr, ONE_GROUP: tl.constexpr, EVEN_KB: tl.constexpr,
              GB: tl.constexpr):
    """Every format in float32 (``w_rows``: the byte rows of W, ``[BLOCK_N, 1]`` pointers)."""
    offs_j = tl.arange(0, BLOCK_KB)
    NG: tl.constexpr = BLOCK_KB // GB  # groups per tile
    offs_g = tl.arange(0, NG)
    if ONE_GROUP:  # elementwise (the epilogue scales), else per group, scaled here
        acc = tl.zeros((BLOCK_N, BLOCK_KB), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    if FMT == 0:
        if HAS_ZEROS:
            zf1 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)  # per-group, loaded below
        else:
            zf1 = tl.full((BLOCK_N, 1), ZERO + 8388608.0, tl.float32)
        if ONE_GROUP and HAS_ZEROS:
            zf1 = tl.load(z_ptr + rn * G).to(tl.float32)[:, None] + 8388608.0
    for t in range(t_lo, t_hi):
        jb = t * BLOCK_KB + offs_j
        if EVEN_KB:
            b = tl.load(w_rows + jb[None, :])
        else:
            b = tl.load(w_rows + jb[None, :], mask=(jb < KB)[None, :], other=0)
        if not ONE_GROUP:
            gi = (t * BLOCK_KB) // GB + offs_g
            g_ok = gi < G
            gidx = rn[:, None] * G + gi[None, :]
            if FMT == 0 and HAS_ZEROS:
                zf1 = tl.load(z_ptr + gidx, mask=g_ok[None, :], other=0).to(tl.float32) + 8388608.0
        if PACK == 2:
            # x at even / odd k: the low / high nibble of byte j.
            x_lo = tl.load(x_ptr + (2 * jb) * stride_xk, mask=2 * jb < K, other=0.0).to(tl.float32)
            x_hi = tl.load(x_ptr + (2 * jb + 1) * stride_xk, mask=2 * jb + 1 < K, other=0.0).to(tl.float32)
            if FMT == 0:
                f_lo, f_hi = magic_nibbles_f32(b, ASM)
                zfe = _per_byte(zf1, BLOCK_N, BLOCK_KB, GB, NG, HAS_ZEROS and NG > 1)
                p = x_lo[None, :] * (f_lo - zfe) + x_hi[None, :] * (f_hi - zfe)
            else:
                if ASM:  # the levels from a table in registers (float16-rounded), no gather
                    v_lo, v_hi = nf4_nibbles_f32_asm(b)
                else:
                    bi = b.to(tl.int32)
                    v_lo, v_hi = tl.load(cb_ptr + (bi & 0xF)), tl.load(cb_ptr + (bi >> 4))
                p = x_lo[None, :] * v_lo + x_hi[None, :] * v_hi
        else:
            xv = tl.load(x_ptr + jb * stride_xk, mask=jb < K, other=0.0).to(tl.float32)
            f = magic_bytes_f32(b, ASM, FLIP)
            p = xv[None, :] * (f - _per_byte(zf1, BLOCK_N, BLOCK_KB, GB, NG, HAS_ZEROS and NG > 1))
        if ONE_GROUP:
            acc += p
        else:
            # One scale per (row, group): applied to the group's sum.
            acc += _group_sums(p, BLOCK_N, BLOCK_KB, GB) * group_scale(s_ptr, dqs_ptr, dq_off, gidx, g_ok[None, :],
                                                                       DQ, DQ_BLOCK)
    return tl.sum(acc, axis=1)


@triton.jit
def _zero_addend(z):
    """Float32 zero points -> the HFMA2 addend pair (-(1024 + z), -(64 + z)) as int32 bits."""
    lo = (-1024.0 - z).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi = (-64.0 - z).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    return (hi << 16) | lo


@triton.jit
def _word_dot_half2(w, xa, add):
    """Sum of a word's 8 products: byte i of ``w`` holds the codes of x pair i at address ``xa``
    (4 int32 = 8 float16, one 16-byte load: ptxas merges the equal loads of the rows a thread
    holds; a Triton load here would be re-laid-out through shared memory, barriers per tile)."""
    return tl.inline_asm_elementwise(
        asm="{ .reg .b32 t, q, a, m, c, l, x0, x1, x2, x3; .reg .b16 lo, hi; .reg .f32 f0, f1;"
            " ld.global.nc.v4.b32 {x0, x1, x2, x3}, [$2];"
            " mov.b32 m, 0x2C003C00; mov.b32 c, 0x00F0000F; mov.b32 l, 0x64006400;"
            " prmt.b32 t, $1, $1, 0x0000; lop3.b32 q, t, c, l, 0xEA; fma.rn.f16x2 q, q, m, $3;"
            " mul.rn.f16x2 a, q, x0;"
            " prmt.b32 t, $1, $1, 0x1111; lop3.b32 q, t, c, l, 0xEA; fma.rn.f16x2 q, q, m, $3;"
            " fma.rn.f16x2 a, q, x1, a;"
            " prmt.b32 t, $1, $1, 0x2222; lop3.b32 q, t, c, l, 0xEA; fma.rn.f16x2 q, q, m, $3;"
            " fma.rn.f16x2 a, q, x2, a;"
            " prmt.b32 t, $1, $1, 0x3333; lop3.b32 q, t, c, l, 0xEA; fma.rn.f16x2 q, q, m, $3;"
            " fma.rn.f16x2 a, q, x3, a;"
            " mov.b32 {lo, hi}, a; cvt.f32.f16 f0, lo; cvt.f32.f16 f1, hi; add.f32 $0, f0, f1; }",
        constraints="=r,r,l,r", args=[w, xa, add], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def half2_tiles(x_ptr, w_ptr, s_ptr, z_ptr, dqs_ptr, dq_off, rn, t_lo, t_hi, KB, G,
                ZERO: tl.constexpr, HAS_ZEROS: tl.constexpr, DQ: tl.constexpr, DQ_BLOCK: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, ONE_GROUP: tl.constexpr, GB: tl.constexpr):
    """4-bit UINT codes, float16 x, paired float16 arithmetic. The caller guarantees whole tiles
    (``KB % BLOCK_KB == 0``: no masks), a contiguous 16-byte aligned x, a 4-byte aligned W and groups
    of a multiple of 8 codes."""
    BW: tl.constexpr = BLOCK_KB // 4  # 32-bit words of W per row and tile
    GW: tl.constexpr = GB // 4        # words per group
    NG: tl.constexpr = BLOCK_KB // GB
    KW = KB // 4
    offs_w = tl.arange(0, BW)
    offs_g = tl.arange(0, NG)
    w_rows = w_ptr.to(tl.pointer_type(tl.int32)) + rn.to(tl.int64)[:, None] * KW
    x32 = x_ptr.to(tl.pointer_type(tl.int32))  # x pair j = (x[2j], x[2j+1]) = the codes of byte j
    if ONE_GROUP:
        acc = tl.zeros((BLOCK_N, BW), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    if ONE_GROUP and HAS_ZEROS:
        add1 = _zero_addend(tl.load(z_ptr + rn * G).to(tl.float32))[:, None]
    else:
        add1 = _zero_addend(tl.full((BLOCK_N, 1), ZERO, tl.float32))
    for t in range(t_lo, t_hi):
        jw = t * BW + offs_w
        w = tl.load(w_rows + jw[None, :])
        xa = (x32 + 4 * jw[None, :] + 0 * rn[:, None]).to(tl.int64, bitcast=True)
        if ONE_GROUP:
            acc += _word_dot_half2(w, xa, add1)
        else:
            gi = (t * BLOCK_KB) // GB + offs_g
            g_ok = gi < G
            gidx = rn[:, None] * G + gi[None, :]
            add = add1
            if HAS_ZEROS:
                addg = _zero_addend(tl.load(z_ptr + gidx, mask=g_ok[None, :], other=0).to(tl.float32))
                add = _per_byte(addg, BLOCK_N, BW, GW, NG, NG > 1)
            p = _word_dot_half2(w, xa, add)
            acc += _group_sums(p, BLOCK_N, BW, GW) * group_scale(s_ptr, dqs_ptr, dq_off, gidx, g_ok[None, :],
                                                                 DQ, DQ_BLOCK)
    return tl.sum(acc, axis=1)
