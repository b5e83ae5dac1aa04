"""Shared ``@triton.jit`` helpers: round-half-to-even and the int8 quantization step."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["round_half_even", "quantize_tile"]


@triton.jit
def round_half_even(v):
    """``torch.round`` for |v| < 2**22. libdevice.rint would do, but the CPU interpreter lacks it,
    and the ``+1.5*2**23`` trick is at the mercy of fast-math; floor and a tie fix are exact."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def quantize_tile(x, inv_scale):
    """``clamp(round(x * inv_scale), -127, 127)`` as int8; ``inv_scale = 127 / absmax``."""
    q = round_half_even(x * inv_scale)
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    return q.to(tl.int8)
