"""4-bit NormalFloat (NF4, Dettmers et al., QLoRA 2023), block-wise absmax, double quantization.

Each block of ``block_size`` consecutive input dims of an output row is divided by its absmax,
and every value becomes the index of the nearest of 16 fixed levels (``NF4_CODEBOOK``: quantiles of
a standard normal rescaled to [-1, 1], with an exact 0). ``w ~ NF4_CODEBOOK[q] * absmax``.

Double quantization (QLoRA section 3) stores the float32 absmax values themselves in 8 bits: the
mean is subtracted (absmax values are all positive), then each run of 256 consecutive absmax values
gets one float32 absmax of its own and int8 codes. bitsandbytes stores those codes as indices into
its non-linear "dynamic" 8-bit map; qcompiler uses linear int8 codes (``round(c * 127 / a2)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qcompiler.quant.uniform import expand_groups, effective_group_size, group_view

__all__ = ["NF4_CODEBOOK", "DOUBLE_QUANT_BLOCK", "quantize_nf4", "dequantize_nf4", "double_quantize", "dequantize_blockwise_int8"]

# The 16 NF4 levels, as the QLoRA paper / bitsandbytes define them (index = 4-bit code).
NF4_CODEBOOK = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32)

# Decision boundaries between neighbouring levels: nearest level = number of midpoints below x.
_MIDPOINTS = (NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2

_TINY = 1e-12

# absmax values sharing one second-level scale in double quantization (QLoRA: 256)
DOUBLE_QUANT_BLOCK = 256


def quantize_nf4(w: Tensor, block_size: int = 64) -> tuple[Tensor, Tensor, int]:
    """``[N, K]`` -> ``(codes [N, K] uint8, absmax [N, ceil(K / b)] float32, b)``."""
    n, k = w.shape
    b = effective_group_size(k, block_size)
    wg = group_view(w.detach(), b)
    absmax = wg.abs().amax(dim=-1)
    normed = wg / absmax.clamp_min(_TINY)[..., None]
    codes = torch.bucketize(normed, _MIDPOINTS.to(normed.device))
    return codes.reshape(n, -1)[:, :k].to(torch.uint8), absmax.contiguous(), b


def dequantize_nf4(codes: Tensor, absmax: Tensor, block_size: int) -> Tensor:
    """``[N, K]`` codes -> ``[N, K]`` float32 weight."""
    levels = NF4_CODEBOOK.to(codes.device)[codes.long()]
    return levels * expand_groups(absmax.float(), block_size, codes.shape[1])


def double_quantize(absmax: Tensor, block_size: int = DOUBLE_QUANT_BLOCK) -> tuple[Tensor, Tensor, Tensor]:
    """float32 absmax (any shape) -> ``(int8 codes, same shape; float32 [ceil(n / block)]; float32 [1])``."""
    flat = absmax.float().reshape(-1)
    offset = flat.mean().reshape(1) if flat.numel() else flat.new_zeros(1)
    centred = flat - offset
    blocks = -(-flat.numel() // block_size)
    padded = torch.nn.functional.pad(centred, (0, blocks * block_size - flat.numel())).reshape(blocks, block_size)
    a2 = padded.abs().amax(dim=-1).clamp_min(_TINY)
    q = torch.round(padded * (127.0 / a2[:, None])).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1)[: flat.numel()].reshape(absmax.shape), a2, offset


def dequantize_blockwise_int8(q: Tensor, absmax: Tensor, offset: Tensor, block_size: int) -> Tensor:
    """Inverse of :func:`double_quantize`: ``q * absmax[block] / 127 + offset``, float32, shape of ``q``."""
    flat = q.reshape(-1).float()
    per = absmax.float().repeat_interleave(block_size)[: flat.numel()]
    return (flat * per / 127.0 + offset.float()).reshape(q.shape)
