"""The Triton kernels as torch custom ops, namespace ``qcompiler_triton``.

A lowered graph calls ``torch.ops.qcompiler_triton.<op>``; each op has a fake implementation, so
the graph still prints, re-traces (``make_fx``, ``torch.compile``) and exports, with the kernels
opaque. ``torch.library.triton_op`` would let Inductor see inside, but it fails under
``torch.export`` when the kernels run in the CPU interpreter (CI). ``torch.library.custom_op``
works but costs ~35 µs of host time per call (measured: 35 vs 10 µs for a ``Library``-defined
op with the same schema), which at decode sizes is longer than the kernel; so the ops are
defined with ``torch.library.Library`` + ``register_fake``.

Before / after ``lower-triton``::

    xq, xs, xo = qcompiler.quantize_rowwise(x, idx)          y = qcompiler_triton.int8_outlier_linear(
    y = qcompiler.int8_linear(xq, xs, wq, ws, xo, wo, b, f16)         x, wq, ws, idx, mask, wo, b)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from qcompiler.ops.int8_linear import int8_linear_dynamic_outlier_fake, int8_linear_fake
from qcompiler.ops.quantize import quantize_rowwise_dynamic_fake, quantize_rowwise_fake
from qcompiler.ops.weight_only import weight_only_linear_fake

# `from module import name` (never `from package import module`): the package re-exports
# launchers named like their modules, which shadow the module attributes.
from qcompiler.backends.triton.int8_linear import int8_linear as _int8_linear
from qcompiler.backends.triton.int8_linear_dynamic_outlier import \
    int8_linear_dynamic_outlier as _int8_linear_dynamic_outlier
from qcompiler.backends.triton.outlier_linear import \
    int8_dynamic_outlier_linear as _int8_dynamic_outlier_linear
from qcompiler.backends.triton.outlier_linear import int8_outlier_linear as _int8_outlier_linear
from qcompiler.backends.triton.quantize_rowwise import quantize_rowwise as _quantize_rowwise
from qcompiler.backends.triton.quantize_rowwise_dynamic import \
    quantize_rowwise_dynamic as _quantize_rowwise_dynamic
from qcompiler.backends.triton.weight_only_linear import weight_only_linear as _weight_only_linear
from qcompiler.backends.triton.weight_only_linear_ops import \
    weight_only_nf4_linear as _weight_only_nf4_linear
from qcompiler.backends.triton.weight_only_linear_ops import \
    weight_only_uint_linear as _weight_only_uint_linear

__all__ = [
    "quantize_rowwise",
    "quantize_rowwise_dynamic",
    "int8_linear",
    "int8_linear_dynamic_outlier",
    "weight_only_int8_linear",
    "int8_outlier_linear",
    "int8_dynamic_outlier_linear",
    "weight_only_uint_linear",
    "weight_only_nf4_linear",
]

_NS = "qcompiler_triton"
_LIB = torch.library.Library(_NS, "DEF")  # noqa: TOR901 - kept alive for the process


def _same_as(ref, name: str | None = None) -> str:
    """The schema of the reference op ``ref`` (``torch.ops.qcompiler.<op>.default``), renamed ``name``."""
    schema = str(ref._schema).split("::", 1)[1]
    return schema if name is None else name + schema[schema.index("("):]


def _define(schema: str, impl, fake) -> None:
    name = schema.split("(", 1)[0]
    _LIB.define(schema)
    # One implementation for every device: the launchers run on CUDA, or on the CPU interpreter.
    _LIB.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{_NS}::{name}", fake, lib=_LIB)


def _linear_out(x: Tensor, wq: Tensor, dtype: torch.dtype) -> Tensor:
    return x.new_empty((*x.shape[:-1], wq.shape[0]), dtype=dtype)


def quantize_rowwise(x: Tensor, outlier_idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Triton ``qcompiler::quantize_rowwise``."""
    return _quantize_rowwise(x, outlier_idx)


def quantize_rowwise_dynamic(x: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Triton ``qcompiler::quantize_rowwise_dynamic``."""
    return _quantize_rowwise_dynamic(x, threshold)


def int8_linear(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor,
                x_outliers: Optional[Tensor], w_outliers: Optional[Tensor],
                bias: Optional[Tensor], out_dtype: torch.dtype) -> Tensor:
    """Triton ``qcompiler::int8_linear`` (one fused launch)."""
    return _int8_linear(xq, x_scale, wq, w_scale, x_outliers, w_outliers, bias, out_dtype)


def int8_linear_dynamic_outlier(xq: Tensor, x_scale: Tensor, x: Tensor, outlier_mask: Tensor,
                                wq: Tensor, w_scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Triton ``qcompiler::int8_linear_dynamic_outlier``."""
    return _int8_linear_dynamic_outlier(xq, x_scale, x, outlier_mask, wq, w_scale, bias)


def weight_only_int8_linear(x: Tensor, wq: Tensor, w_scale: Tensor, outlier_idx: Optional[Tensor],
                            w_outliers: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    """16-bit X times int8 W dequantized in registers (M <= 16 only)."""
    return _weight_only_linear(x, wq, w_scale, outlier_idx, w_outliers, bias)


def int8_outlier_linear(x: Tensor, wq: Tensor, w_scale: Tensor, outlier_idx: Tensor,
                        outlier_mask: Optional[Tensor], w_outliers: Optional[Tensor],
                        bias: Optional[Tensor], act_quant: int = 0) -> Tensor:
    """Static int8-outlier linear from the 16-bit X, dispatched on M (see ``outlier_linear``);
    ``act_quant``: :class:`.act_quant.ActQuant` (0 auto, 1 separate quantize kernel, 2 fused)."""
    return _int8_outlier_linear(x, wq, w_scale, outlier_idx, outlier_mask, w_outliers, bias, act_quant)


def int8_dynamic_outlier_linear(x: Tensor, wq: Tensor, w_scale: Tensor, threshold: float,
                                bias: Optional[Tensor], act_quant: int = 0) -> Tensor:
    """Dynamic int8-outlier linear from the 16-bit X, dispatched on M; ``act_quant`` as above."""
    return _int8_dynamic_outlier_linear(x, wq, w_scale, threshold, bias, act_quant)


def weight_only_uint_linear(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor],
                            bias: Optional[Tensor], bits: int, group_size: int) -> Tensor:
    """Triton ``qcompiler::weight_only_linear`` (8/4-bit codes), dispatched on M."""
    return _weight_only_uint_linear(x, qweight, scales, zeros, bias, bits, group_size)


def weight_only_nf4_linear(x: Tensor, qweight: Tensor, absmax: Tensor, absmax_scale: Optional[Tensor],
                           absmax_offset: Optional[Tensor], bias: Optional[Tensor], block_size: int,
                           absmax_block: int, levels: Optional[Tensor] = None,
                           levels_half: Optional[Tensor] = None) -> Tensor:
    """Triton ``qcompiler::nf4_linear``, optionally with ``dequantize_blockwise_int8`` of the absmax
    fused in (``absmax`` int8 codes + ``absmax_scale`` + ``absmax_offset``), dispatched on M;
    ``levels`` / ``levels_half``: the NF4 table (float32 / x's dtype) as graph buffers."""
    return _weight_only_nf4_linear(x, qweight, absmax, absmax_scale, absmax_offset, bias, block_size,
                                   absmax_block, levels, levels_half)


# The kernels that implement a reference op take its schema and its fake implementation.
_REF = torch.ops.qcompiler
_define(_same_as(_REF.quantize_rowwise.default), quantize_rowwise, quantize_rowwise_fake)
_define(_same_as(_REF.quantize_rowwise_dynamic.default), quantize_rowwise_dynamic, quantize_rowwise_dynamic_fake)
_define(_same_as(_REF.int8_linear.default), int8_linear, int8_linear_fake)
_define(_same_as(_REF.int8_linear_dynamic_outlier.default), int8_linear_dynamic_outlier,
        int8_linear_dynamic_outlier_fake)
_define(_same_as(_REF.weight_only_linear.default, "weight_only_uint_linear"), weight_only_uint_linear,
        weight_only_linear_fake)
# The fused kernels have no reference op of their own.
_define("weight_only_int8_linear(Tensor x, Tensor wq, Tensor w_scale, Tensor? outlier_idx, "
        "Tensor? w_outliers, Tensor? bias) -> Tensor", weight_only_int8_linear,
        lambda x, wq, w_scale, outlier_idx, w_outliers, bias: _linear_out(x, wq, x.dtype))
_define("int8_outlier_linear(Tensor x, Tensor wq, Tensor w_scale, Tensor outlier_idx, "
        "Tensor? outlier_mask, Tensor? w_outliers, Tensor? bias, int act_quant=0) -> Tensor",
        int8_outlier_linear,
        lambda x, wq, w_scale, outlier_idx, outlier_mask, w_outliers, bias, act_quant=0:
        _linear_out(x, wq, x.dtype))
_define("int8_dynamic_outlier_linear(Tensor x, Tensor wq, Tensor w_scale, float threshold, "
        "Tensor? bias, int act_quant=0) -> Tensor", int8_dynamic_outlier_linear,
        lambda x, wq, w_scale, threshold, bias, act_quant=0: _linear_out(x, wq, x.dtype))
_define("weight_only_nf4_linear(Tensor x, Tensor qweight, Tensor absmax, Tensor? absmax_scale, "
        "Tensor? absmax_offset, Tensor? bias, int block_size, int absmax_block, Tensor? levels=None, "
        "Tensor? levels_half=None) -> Tensor",
        weight_only_nf4_linear,
        lambda x, qweight, absmax, absmax_scale, absmax_offset, bias, block_size, absmax_block, levels=None,
        levels_half=None: _linear_out(x, qweight, x.dtype))
