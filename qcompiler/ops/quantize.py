"""Activation quantization ops: ``qcompiler::quantize_rowwise`` and friends."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["quantize_rowwise", "quantize_rowwise_dynamic", "quantize_tensorwise", "quantize_weight",
           "quantize_rowwise_fake", "quantize_rowwise_dynamic_fake", "quantize_tensorwise_fake"]

# A row of zeros quantizes to zeros; its scale must not be 0 or dequantization divides by it.
_TINY = 1e-12


def _to_int8(xf: Tensor, scale: Tensor) -> Tensor:
    return torch.round(xf * (127.0 / scale)).clamp_(-127, 127).to(torch.int8)


@torch.library.custom_op("qcompiler::quantize_rowwise", mutates_args=())
def quantize_rowwise(x: Tensor, outlier_idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row-wise absmax int8 over the non-outlier columns; the outlier columns are gathered.

    Returns ``(x_int8, row_scale, x_outliers)``: ``x_int8`` has the shape of ``x`` with the
    outlier columns zeroed, ``row_scale`` is ``[..., 1]`` float32, ``x_outliers`` is
    ``x[..., outlier_idx]`` in ``x``'s dtype.
    """
    xf = x.float()
    x_out = x.index_select(-1, outlier_idx)
    if outlier_idx.numel():
        xf = xf.index_fill(-1, outlier_idx, 0.0)
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(_TINY) if x.shape[-1] else \
        xf.new_full((*x.shape[:-1], 1), _TINY)
    return _to_int8(xf, scale), scale, x_out


@quantize_rowwise.register_fake
def quantize_rowwise_fake(x, outlier_idx):
    return (x.new_empty(x.shape, dtype=torch.int8),
            x.new_empty((*x.shape[:-1], 1), dtype=torch.float32),
            x.new_empty((*x.shape[:-1], outlier_idx.shape[0])))


@torch.library.custom_op("qcompiler::quantize_rowwise_dynamic", mutates_args=())
def quantize_rowwise_dynamic(x: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Like ``quantize_rowwise``, but the outlier columns are those of *this* ``x`` whose
    max |x| exceeds ``threshold`` (bitsandbytes' behaviour). Returns a ``[K]`` bool mask in
    place of gathered columns, so every output has a static shape."""
    xf = x.float()
    mask = xf.abs().reshape(-1, x.shape[-1]).amax(dim=0) > threshold if x.numel() else \
        torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    xf = xf.masked_fill(mask, 0.0)
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(_TINY) if x.shape[-1] else \
        xf.new_full((*x.shape[:-1], 1), _TINY)
    return _to_int8(xf, scale), scale, mask


@quantize_rowwise_dynamic.register_fake
def quantize_rowwise_dynamic_fake(x, threshold):
    return (x.new_empty(x.shape, dtype=torch.int8),
            x.new_empty((*x.shape[:-1], 1), dtype=torch.float32),
            x.new_empty((x.shape[-1],), dtype=torch.bool))


@torch.library.custom_op("qcompiler::quantize_tensorwise", mutates_args=())
def quantize_tensorwise(x: Tensor) -> tuple[Tensor, Tensor]:
    """One absmax scale for all of ``x`` (shape ``[1]``)."""
    xf = x.float()
    scale = (xf.abs().amax().reshape(1) if x.numel() else xf.new_zeros(1)).clamp_min(_TINY)
    return _to_int8(xf, scale), scale


@quantize_tensorwise.register_fake
def quantize_tensorwise_fake(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((1,), dtype=torch.float32)


_ROWS_PER_CHUNK = 4096  # an LM head (128k rows) in float32 at once would take several GB


def quantize_weight(w: Tensor, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Quantize a ``[N, K]`` weight: absmax per output channel (``[N]`` scales) or per tensor
    (``[1]``). Runs once at compile time, so it is a plain function, not an op."""
    if per_channel and w.shape[0] > _ROWS_PER_CHUNK:  # rows are independent: bound the float32 temporaries
        parts = [quantize_weight(w[i:i + _ROWS_PER_CHUNK]) for i in range(0, w.shape[0], _ROWS_PER_CHUNK)]
        return torch.cat([q for q, _ in parts]), torch.cat([s for _, s in parts])
    wf = w.detach().float()
    if per_channel:
        scale = wf.abs().amax(dim=1).clamp_min(_TINY) if wf.shape[1] else wf.new_full((wf.shape[0],), _TINY)
        return _to_int8(wf, scale[:, None]), scale
    scale = (wf.abs().amax().reshape(1) if wf.numel() else wf.new_zeros(1)).clamp_min(_TINY)
    return _to_int8(wf, scale), scale
