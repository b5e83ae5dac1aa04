"""Codes packed into int32 words, ``32 / bits`` per word, the lowest bits first (GPTQ and AWQ).

    word = c[0] | c[1] << bits | c[2] << 2 * bits | ...        (along the packed dim)

AWQ's GEMM layout also reorders the 8 codes inside a word (:data:`AWQ_ORDER`).
"""

from __future__ import annotations

import torch

__all__ = ["unpack_int32", "AWQ_ORDER", "AWQ_REVERSE_ORDER"]

# AutoAWQ GEMM: nibble i of a word holds output column 8 * word + AWQ_ORDER[i]
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j of a word is nibble AWQ_REVERSE_ORDER[j]


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """``packed`` int32 -> int32 codes, ``32 / bits`` times longer along ``dim`` (0 or 1)."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    p = packed.to(torch.int32)
    if dim == 0:
        codes = (p.unsqueeze(1) >> shifts.view(1, per, 1)) & (2 ** bits - 1)   # [R, per, C]
        return codes.reshape(p.shape[0] * per, p.shape[1])
    codes = (p.unsqueeze(2) >> shifts.view(1, 1, per)) & (2 ** bits - 1)       # [R, C, per]
    return codes.reshape(p.shape[0], p.shape[1] * per)
