"""Shared ``@triton.jit`` helpers: round-half-to-even and the int8 quantization step."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["round_half_even", "mul_rn", "quantize_tile", "quantize_tile_fast"]


@triton.jit
def round_half_even(v):
    """``torch.round`` for |v| < 2**22. libdevice.rint would do, but the CPU interpreter lacks it,
    and the ``+1.5*2**23`` trick is at the mercy of fast-math; floor and a tie fix are exact."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def mul_rn(a, b, EXACT: tl.constexpr):
    """``a * b`` rounded to float32 on its own. The GPU compiler contracts a multiply followed by
    an add into one FMA (no rounding in between), which moves values across .5 ties and makes
    int8 codes differ from torch's by 1; PTX never contracts ``mul.rn``. The CPU interpreter
    has no inline asm, and numpy does not contract, so it takes the plain product."""
    if EXACT:
        a, b = tl.broadcast(a, b)
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return a * b


@triton.jit
def quantize_tile(x, inv_scale, EXACT: tl.constexpr):
    """``clamp(round(x * inv_scale), -127, 127)`` as int8; ``inv_scale = 127 / absmax``."""
    q = round_half_even(mul_rn(x, inv_scale, EXACT))
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    return q.to(tl.int8)


@triton.jit
def quantize_tile_fast(x, inv_scale, EXACT: tl.constexpr):
    """:func:`quantize_tile` with the same codes in three full-rate instructions per element, for
    quantizing inside a GEMM's main loop (where ALU work competes with the tensor cores).

    ``mul.rn`` then ``add.rn 1.5*2**23``: the sum lies in [2**23, 2**24), where the float grid is
    the integers, so the add itself rounds half to even (|v| <= 127.5 here, far below 2**22);
    the code is the sum's low mantissa bits. Inline PTX keeps the compiler from fusing the two
    roundings into one FMA. The CPU interpreter (no inline asm) takes :func:`quantize_tile`."""
    if EXACT:
        x, inv_scale = tl.broadcast(x, inv_scale)
        q = tl.inline_asm_elementwise(
            "{ .reg .f32 t; mul.rn.f32 t, $1, $2; add.rn.f32 t, t, 0f4B400000; "
            "mov.b32 $0, t; sub.s32 $0, $0, 0x4B400000; "
            "min.s32 $0, $0, 127; max.s32 $0, $0, -127; }",
            "=r,f,f", [x, inv_scale], dtype=tl.int32, is_pure=True, pack=1)
        return q.to(tl.int8)
    return quantize_tile(x, inv_scale, EXACT)
