"""Weight-only linears: float activations times a weight stored in 8, 4 (or fewer) bits.

Two ops, one per weight format, plus the small op that undoes NF4's double quantization:

``qcompiler::weight_only_linear(x, qweight, scales, zeros, bias, bits, group_size) -> y``
    Uniform codes with zero points (round-to-nearest, GPTQ and AWQ all produce this).
    ``W[n, k] = (q[n, k] - z[n, k // g]) * scales[n, k // g]`` and ``y = x @ W.T + bias``.

    * ``x [..., K]`` float (fp32/fp16/bf16); the output has x's dtype and shape ``[..., N]``.
    * ``qweight`` uint8: ``bits == 8``: ``[N, K]``, one code per byte; ``bits == 4``:
      ``[N, ceil(K / 2)]`` row-major, two codes per byte, the even k in the low nibble
      (``byte = q[2j] | q[2j+1] << 4``; an odd K is padded with one code).
    * ``scales [N, G]`` float32 with ``G = ceil(K / g)``: the step of each group of ``g``
      consecutive input dims of one output row (``g = K``: per output channel). The last group
      is shorter when ``g`` does not divide K.
    * ``zeros [N, G]`` uint8, one zero point per group (one per byte, unpacked), or None for the
      symmetric format, whose zero point is ``2^(bits-1)`` (8 for int4, 128 for int8).
    * ``bias [N]`` float or None.

    When K is a multiple of g this is ONNX Runtime's ``MatMulNBits`` layout: its ``B`` of shape
    ``[N, K / g, g * bits / 8]`` is ``qweight`` reshaped, its ``scales`` are ours flattened (cast
    to x's dtype), and its ``zero_points`` are ours packed (absent = the same default).

``qcompiler::nf4_linear(x, qweight, absmax, bias, block_size) -> y``
    ``W[n, k] = NF4_CODEBOOK[q[n, k]] * absmax[n, k // b]``; ``qweight`` packed as above,
    ``absmax [N, ceil(K / b)]`` float32 (QLoRA/bitsandbytes NF4 with blocks of ``b`` along K).

``qcompiler::dequantize_blockwise_int8(q, absmax, offset, block_size) -> float32``
    NF4 double quantization: ``q * absmax[i // block] / 127 + offset`` over the flattened ``q``
    (int8), shape of ``q``; its output feeds ``nf4_linear``'s ``absmax``.

The reference implementations dequantize W to float32 and multiply in float32; a backend may
multiply in x's dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from qcompiler.quant.nf4 import dequantize_blockwise_int8 as _dq_blockwise
from qcompiler.quant.nf4 import dequantize_nf4
from qcompiler.quant.packing import unpack_int4
from qcompiler.quant.uniform import dequantize_uint

__all__ = ["weight_only_linear", "nf4_linear", "dequantize_blockwise_int8", "unpacked_codes",
           "weight_only_linear_fake", "nf4_linear_fake", "dequantize_blockwise_int8_fake"]


def unpacked_codes(qweight: Tensor, bits: int, k: int) -> Tensor:
    """The ``[N, K]`` uint8 codes a stored ``qweight`` holds."""
    if bits == 4:
        return unpack_int4(qweight, k)
    torch._check(bits == 8, lambda: f"weight_only_linear stores 4- or 8-bit codes, got bits={bits}")
    return qweight


def _linear(x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    y = x.reshape(-1, x.shape[-1]).float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


@torch.library.custom_op("qcompiler::weight_only_linear", mutates_args=())
def weight_only_linear(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor],
                       bias: Optional[Tensor], bits: int, group_size: int) -> Tensor:
    """``x @ ((q - z) * s).T + bias``; see the module docstring for the layout."""
    codes = unpacked_codes(qweight, bits, x.shape[-1])
    return _linear(x, dequantize_uint(codes, scales, zeros, bits, group_size), bias)


@weight_only_linear.register_fake
def weight_only_linear_fake(x, qweight, scales, zeros, bias, bits, group_size):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.custom_op("qcompiler::nf4_linear", mutates_args=())
def nf4_linear(x: Tensor, qweight: Tensor, absmax: Tensor, bias: Optional[Tensor], block_size: int) -> Tensor:
    """``x @ (NF4_CODEBOOK[q] * absmax).T + bias``; see the module docstring for the layout."""
    codes = unpack_int4(qweight, x.shape[-1])
    return _linear(x, dequantize_nf4(codes, absmax, block_size), bias)


@nf4_linear.register_fake
def nf4_linear_fake(x, qweight, absmax, bias, block_size):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.custom_op("qcompiler::dequantize_blockwise_int8", mutates_args=())
def dequantize_blockwise_int8(q: Tensor, absmax: Tensor, offset: Tensor, block_size: int) -> Tensor:
    """``q * absmax[i // block_size] / 127 + offset`` (flattened index i), float32, shape of ``q``."""
    return _dq_blockwise(q, absmax, offset, block_size)


@dequantize_blockwise_int8.register_fake
def dequantize_blockwise_int8_fake(q, absmax, offset, block_size):
    return q.new_empty(q.shape, dtype=torch.float32)
