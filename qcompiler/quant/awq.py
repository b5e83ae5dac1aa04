"""AWQ (Lin et al., 2023) on plain tensors: activation-aware scales and weight clipping.

A few input channels of a linear carry much larger activations than the rest; their weights
matter most. AWQ multiplies those weight columns by ``s`` before group-wise rounding (so they get
a finer grid relative to their size) and divides the activation by ``s``, which the previous op
absorbs: ``y = (x / s) @ (W * s).T``. ``s = mean|x|^alpha`` per input channel, normalized by
``sqrt(max(s) * min(s))``; ``alpha`` is searched on a grid in [0, 1) to minimize the output error
of the layers that read x (q/k/v together, gate/up together) after quantization. ``alpha = 0``
is plain round-to-nearest, so the search never does worse than it on the calibration rows.

Clipping (also from the AWQ reference implementation): per output row and group, the range is
shrunk by the ratio in ``1, 0.95, ..., 0.55`` that minimizes that group's contribution to the
output error; the clipped weight is then rounded to nearest as usual.

The grid is :func:`qcompiler.quant.quantize_uint`'s (``bits``, ``group_size``, ``symmetric``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from qcompiler.errors import ConfigError
from qcompiler.quant.fake import fake_quantize_uint
from qcompiler.quant.uniform import effective_group_size, group_view

__all__ = ["AWQScales", "awq_search_scales", "awq_clip", "rows_sample"]


def rows_sample(x: Tensor, max_rows: int) -> Tensor:
    """At most ``max_rows`` rows of ``x [R, K]``, evenly spaced (deterministic)."""
    if max_rows <= 0 or x.shape[0] <= max_rows:
        return x
    idx = torch.linspace(0, x.shape[0] - 1, max_rows, device=x.device).round().long()
    return x.index_select(0, idx)


@dataclass(frozen=True)
class AWQScales:
    scales: Tensor   # [K] float32: W[:, j] *= s[j], x[..., j] /= s[j]
    alpha: float     # the exponent chosen
    loss: float      # mean squared output error with these scales
    loss_rtn: float  # the same with s = 1 (alpha = 0): plain round-to-nearest


def _output_error(x: Tensor, refs: Sequence[Tensor], weights: Sequence[Tensor], s: Tensor,
                  bits: int, group_size: int, symmetric: bool) -> float:
    total, count = 0.0, 0
    for w, ref in zip(weights, refs):
        wq = fake_quantize_uint(w * s[None, :], bits, group_size, symmetric) / s[None, :]
        total += (x @ wq.t() - ref).square().sum().item()
        count += ref.numel()
    return total / max(count, 1)


def awq_search_scales(x: Tensor, weights: Sequence[Tensor], bits: int, group_size: int = 128,
                      symmetric: bool = False, n_grid: int = 20) -> AWQScales:
    """The per-channel scales for the linears ``weights`` (each ``[N_i, K]``) reading ``x [R, K]``."""
    if n_grid < 1:
        raise ConfigError(f"AWQ: n_grid must be >= 1, got {n_grid}")
    x = x.detach().float().reshape(-1, x.shape[-1])
    ws = [w.detach().float().to(x.device) for w in weights]
    refs = [x @ w.t() for w in ws]
    x_mean = x.abs().mean(dim=0)
    best = None
    loss_rtn = float("nan")
    for i in range(n_grid):
        alpha = i / n_grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = _output_error(x, refs, ws, s, bits, group_size, symmetric)
        if i == 0:
            loss_rtn = loss
        if best is None or loss < best[2]:
            best = (s, alpha, loss)
    s, alpha, loss = best
    return AWQScales(s.contiguous(), alpha, loss, loss_rtn)


def awq_clip(x: Tensor, w: Tensor, bits: int, group_size: int = 128, symmetric: bool = False,
             n_grid: int = 20, max_shrink: float = 0.5, max_rows: int = 512, rows_per_chunk: int = 256) -> Tensor:
    """``w [N, K]`` with each (row, group) range shrunk to the ratio minimizing the output error
    on ``x [R, K]`` (the input the layer sees, already divided by the AWQ scales)."""
    x = rows_sample(x.detach().float().reshape(-1, x.shape[-1]), max_rows).to(w.device)
    n, k = w.shape
    g = effective_group_size(k, group_size)
    xg = group_view(x, g)                       # [R, G, g]
    wf = w.detach().float()
    ratios = [1.0 - i / n_grid for i in range(max(1, int(max_shrink * n_grid)))]
    out = torch.empty_like(wf)
    for r0 in range(0, n, rows_per_chunk):
        wc = group_view(wf[r0:r0 + rows_per_chunk], g)  # [n, G, g]
        hi = wc.abs().amax(-1, keepdim=True) if symmetric else wc.amax(-1, keepdim=True).clamp(min=0)
        lo = -hi if symmetric else wc.amin(-1, keepdim=True).clamp(max=0)
        best_err = best_w = None
        for ratio in ratios:
            clipped = torch.maximum(torch.minimum(wc, hi * ratio), lo * ratio)
            flat = clipped.reshape(clipped.shape[0], -1)[:, :k]
            deq = group_view(fake_quantize_uint(flat, bits, g, symmetric), g)
            err = torch.einsum("rgk,ngk->rng", xg, deq - wc).square().sum(0)  # [n, G]
            if best_err is None:
                best_err, best_w = err, clipped
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_w = torch.where(better[..., None], clipped, best_w)
        out[r0:r0 + rows_per_chunk] = best_w.reshape(best_w.shape[0], -1)[:, :k]
    return out.to(w.dtype)
