"""Fake-quantization ops for quantization-aware training, with a straight-through estimator.

Forward: the quantize-dequantize round trip of a stored format (``qcompiler/quant/fake.py``),
so training sees exactly the values the compiled model will compute with. Backward: the
gradient passes through unchanged (Bengio et al.'s straight-through estimator; none of these
grids clips a value, so there is no range outside which it should be zeroed).

``qcompiler::fake_quantize_int8(x, per_row, threshold) -> Tensor``
    absmax int8 per row of the last dim (``per_row``) or per tensor; columns whose max |x|
    exceeds ``threshold`` stay exact (``inf``: none). For activations (W8A8) and for int8
    weights, whose rows are their output channels.
``qcompiler::fake_quantize_uint(w, bits, group_size, symmetric) -> Tensor``
    the round-to-nearest weight-only grid (w8/w4, group-wise, zero points when asymmetric).
``qcompiler::fake_quantize_nf4(w, block_size) -> Tensor``
    NF4 levels times the block absmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qcompiler.quant.fake import fake_quantize_int8 as _fq_int8
from qcompiler.quant.fake import fake_quantize_uint as _fq_uint
from qcompiler.quant.nf4 import dequantize_nf4, quantize_nf4

__all__ = ["fake_quantize_int8", "fake_quantize_uint", "fake_quantize_nf4", "FAKE_QUANT_OPS"]


@torch.library.custom_op("qcompiler::fake_quantize_int8", mutates_args=())
def fake_quantize_int8(x: Tensor, per_row: bool, threshold: float) -> Tensor:
    """Absmax int8 round trip; see the module docstring."""
    return _fq_int8(x, per_row, threshold)


@torch.library.custom_op("qcompiler::fake_quantize_uint", mutates_args=())
def fake_quantize_uint(w: Tensor, bits: int, group_size: int, symmetric: bool) -> Tensor:
    """Group-wise uniform round trip of a ``[N, K]`` weight; see the module docstring."""
    return _fq_uint(w, bits, group_size, symmetric)


@torch.library.custom_op("qcompiler::fake_quantize_nf4", mutates_args=())
def fake_quantize_nf4(w: Tensor, block_size: int) -> Tensor:
    """NF4 round trip of a ``[N, K]`` weight; see the module docstring."""
    codes, absmax, b = quantize_nf4(w, block_size)
    return dequantize_nf4(codes, absmax, b).to(w.dtype)


for _op in (fake_quantize_int8, fake_quantize_uint, fake_quantize_nf4):
    _op.register_fake(lambda x, *args: torch.empty_like(x))
    # Straight-through: d(out)/d(x) = identity; the other arguments are not tensors.
    _op.register_autograd(lambda ctx, grad: (grad,) + (None,) * ctx.n_args,
                          setup_context=lambda ctx, inputs, output: setattr(ctx, "n_args", len(inputs) - 1))

FAKE_QUANT_OPS = (
    torch.ops.qcompiler.fake_quantize_int8.default,
    torch.ops.qcompiler.fake_quantize_uint.default,
    torch.ops.qcompiler.fake_quantize_nf4.default,
)
