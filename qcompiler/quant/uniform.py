"""Round-to-nearest uniform quantization of a ``[N, K]`` weight in groups along K.

``w ~ (q - z) * s`` with unsigned ``bits``-bit codes ``q``, one float32 scale ``s`` and one zero
point ``z`` per group of ``g`` consecutive input dims of an output row:

* symmetric: ``s = max|w_g| / (2^(bits-1) - 1)``, ``z = 2^(bits-1)`` for every group (8 for int4,
  128 for int8), not stored; codes ``1 .. 2^bits - 1``.
* asymmetric: ``s = (max(w_g, 0) - min(w_g, 0)) / (2^bits - 1)``, ``z = round(-min(w_g, 0) / s)``
  stored as uint8; the range always holds 0, so zero weights stay exact.

Either way ``|w - (q - z) * s| <= s / 2`` for every weight (round to nearest; no value is clipped).
``group_size = 0`` (or >= K) means one group per output channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qcompiler.errors import ConfigError

__all__ = ["UIntWeight", "effective_group_size", "quantize_uint", "dequantize_uint", "group_view", "expand_groups"]

_TINY = 1e-12  # the scale of an all-zero group: codes equal the zero point, dequantization gives 0


@dataclass(frozen=True)
class UIntWeight:
    codes: Tensor          # [N, K] uint8, unpacked
    scales: Tensor         # [N, G] float32
    zeros: Tensor | None   # [N, G] uint8, None when symmetric (implicit 2^(bits-1))
    bits: int
    group_size: int        # effective: 1 <= g <= K


def effective_group_size(k: int, group_size: int) -> int:
    """The group size actually used for K input dims: 0 or anything >= K means K (per channel)."""
    if group_size < 0:
        raise ConfigError(f"group_size must be >= 0, got {group_size}")
    return max(1, k) if group_size == 0 or group_size >= k else group_size


def group_view(w: Tensor, g: int) -> Tensor:
    """``[N, K]`` -> ``[N, G, g]`` float32, the last group padded with zeros."""
    n, k = w.shape
    groups = -(-k // g) if k else 0
    wf = w.float().contiguous()
    if groups * g != k:
        wf = torch.nn.functional.pad(wf, (0, groups * g - k))
    return wf.reshape(n, groups, g)


def expand_groups(t: Tensor, g: int, k: int) -> Tensor:
    """Per-group values ``[N, G]`` -> per-weight ``[N, K]``."""
    return t.repeat_interleave(g, dim=1)[:, :k]


# Rows quantized at a time: each row's groups are independent, and the float32 temporaries of a
# whole LM head (128k x 4096) would take several GB at once.
ROWS_PER_CHUNK = 4096


def quantize_uint(w: Tensor, bits: int, group_size: int = 0, symmetric: bool = True) -> UIntWeight:
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ConfigError(f"bits must be between 2 and 8, got {bits}")
    if w.shape[0] > ROWS_PER_CHUNK:
        parts = [_quantize_uint(w[i:i + ROWS_PER_CHUNK], bits, group_size, symmetric)
                 for i in range(0, w.shape[0], ROWS_PER_CHUNK)]
        zeros = torch.cat([p.zeros for p in parts]) if parts[0].zeros is not None else None
        return UIntWeight(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]), zeros,
                          bits, parts[0].group_size)
    return _quantize_uint(w, bits, group_size, symmetric)


def _quantize_uint(w: Tensor, bits: int, group_size: int, symmetric: bool) -> UIntWeight:
    n, k = w.shape
    g = effective_group_size(k, group_size)
    wg = group_view(w.detach(), g)
    qmax = 2 ** bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        scales = (wg.abs().amax(dim=-1) / (half - 1)).clamp_min(_TINY)
        q = torch.round(wg / scales[..., None]).clamp_(-(half - 1), half - 1) + half
        zeros = None
    else:
        lo = wg.amin(dim=-1).clamp(max=0.0)
        hi = wg.amax(dim=-1).clamp(min=0.0)
        scales = ((hi - lo) / qmax).clamp_min(_TINY)
        zf = torch.round(-lo / scales).clamp_(0, qmax)
        q = (torch.round(wg / scales[..., None]) + zf[..., None]).clamp_(0, qmax)
        zeros = zf.to(torch.uint8)
    codes = q.reshape(n, -1)[:, :k].to(torch.uint8)
    return UIntWeight(codes, scales.contiguous(), zeros, bits, g)


def dequantize_uint(codes: Tensor, scales: Tensor, zeros: Tensor | None, bits: int, group_size: int) -> Tensor:
    """``[N, K]`` codes -> ``[N, K]`` float32 weight, ``(q - z) * s``."""
    k = codes.shape[1]
    z = expand_groups(zeros.float(), group_size, k) if zeros is not None else float(2 ** (bits - 1))
    return (codes.float() - z) * expand_groups(scales.float(), group_size, k)
