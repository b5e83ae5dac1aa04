"""4-bit codes, two per byte: ``[N, K]`` uint8 codes in 0..15 <-> ``[N, ceil(K / 2)]`` uint8.

Byte ``j`` of row ``n`` holds code ``k = 2j`` in its low nibble and ``k = 2j + 1`` in its high
nibble (``byte = c[2j] | c[2j+1] << 4``), as ONNX Runtime's ``MatMulNBits`` packs ("low-first
along K"). An odd K is padded with one zero code. bitsandbytes packs the other way round (first
element in the high nibble); qcompiler uses the low-first order for every 4-bit format.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qcompiler.errors import UnsupportedError

__all__ = ["pack_int4", "unpack_int4"]


def pack_int4(codes: Tensor) -> Tensor:
    """``[..., K]`` integer codes in ``0..15`` -> ``[..., ceil(K / 2)]`` uint8."""
    if codes.is_floating_point() or codes.dtype == torch.bool:
        raise UnsupportedError(f"pack_int4 takes integer codes, got {codes.dtype}",
                               hint="quantize first (qcompiler.quant.quantize_uint), then pack the codes")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise UnsupportedError(f"pack_int4: codes must lie in 0..15, got {int(codes.min())}..{int(codes.max())}",
                               hint="4-bit codes are unsigned; add the zero point (8 when symmetric) first")
    c = codes.to(torch.uint8)  # in 0..15, so uint8 holds the shifted nibble too: no int32 copy (an LM head's is GBs)
    if c.shape[-1] % 2:
        c = torch.nn.functional.pad(c, (0, 1))
    return (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: Tensor, k: int) -> Tensor:
    """``[..., ceil(k / 2)]`` uint8 -> ``[..., k]`` uint8 codes in ``0..15``."""
    p = packed.to(torch.int32)
    both = torch.stack((p & 0xF, p >> 4), dim=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])
    return both[..., :k].to(torch.uint8)
