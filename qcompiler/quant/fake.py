"""Quantize-and-dequantize round trips ("fake quantization") on plain tensors.

Each returns a float tensor of the input's shape and dtype holding exactly the values the stored
format decodes to, so a float computation with it sees the quantization error of the real ops:

* :func:`fake_quantize_uint` - the grid of :func:`qcompiler.quant.quantize_uint` (group-wise
  unsigned codes, symmetric or with zero points), computed without materializing the codes;
* :func:`fake_quantize_int8` - absmax int8 (``q = round(x * 127 / C)``, ``C`` per row of the last
  dim or per tensor), as ``quantize_rowwise`` / ``quantize_tensorwise`` / ``quantize_weight`` do;
  columns whose max |x| exceeds ``threshold`` stay exact and are left out of the scales
  (``quantize_rowwise_dynamic``'s outlier decomposition).

Used by AWQ's search and by the QAT fake-quantization ops (``qcompiler/ops/fake_quant.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qcompiler.quant.uniform import effective_group_size, group_view

__all__ = ["fake_quantize_uint", "fake_quantize_int8"]

_TINY = 1e-12  # the same floor quantize_uint and the int8 quantizers use for all-zero groups


def fake_quantize_uint(w: Tensor, bits: int, group_size: int = 0, symmetric: bool = True) -> Tensor:
    """``[N, K]`` -> ``[N, K]``: ``(q - z) * s`` with quantize_uint's ``q``, ``z`` and ``s``."""
    n, k = w.shape
    g = effective_group_size(k, group_size)
    wg = group_view(w.detach(), g)
    if symmetric:
        half = 2 ** (bits - 1)
        s = (wg.abs().amax(dim=-1, keepdim=True) / (half - 1)).clamp_min(_TINY)
        out = torch.round(wg / s).clamp_(-(half - 1), half - 1).mul_(s)
    else:
        qmax = 2 ** bits - 1
        lo = wg.amin(dim=-1, keepdim=True).clamp(max=0.0)
        hi = wg.amax(dim=-1, keepdim=True).clamp(min=0.0)
        s = ((hi - lo) / qmax).clamp_min(_TINY)
        z = torch.round(-lo / s).clamp_(0, qmax)
        out = (torch.round(wg / s).add_(z).clamp_(0, qmax) - z).mul_(s)
    return out.reshape(n, -1)[:, :k].to(w.dtype)


def fake_quantize_int8(x: Tensor, per_row: bool = True, threshold: float = math.inf) -> Tensor:
    """Absmax int8 round trip of ``x [..., K]``; outlier columns (max |x| > threshold) stay exact."""
    xf = x.detach().float()
    mask = None
    if math.isfinite(threshold) and x.numel():
        mask = xf.abs().reshape(-1, x.shape[-1]).amax(dim=0) > threshold
        xf = xf.masked_fill(mask, 0.0)
    if per_row:
        scale = xf.abs().amax(dim=-1, keepdim=True) if x.shape[-1] else xf.new_zeros((*x.shape[:-1], 1))
    else:
        scale = xf.abs().amax() if x.numel() else xf.new_zeros(())
    scale = scale.clamp_min(_TINY)
    out = torch.round(xf * (127.0 / scale)).clamp_(-127, 127) * (scale / 127.0)
    if mask is not None:
        out = torch.where(mask, x.detach().float(), out)
    return out.to(x.dtype)
