"""Shared ``@triton.jit`` helpers: round-half-to-even and the int8 quantization step."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["round_half_even", "mul_rn", "quantize_tile"]


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
