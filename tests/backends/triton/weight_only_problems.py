"""Weight-only problems for the Triton kernel tests: a float W quantized in one of the stored formats
(UINT 8/4-bit with or without zero points, NF4 with or without double quantization), the kernel's
operand, the reference op call, and the bounds the tests check against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from triton_problems import DEVICE

from qcompiler.backends.triton._weight_operand import WeightOperand, nf4_operand, uint_operand
from qcompiler.quant.nf4 import DOUBLE_QUANT_BLOCK, NF4_CODEBOOK, dequantize_nf4, double_quantize, quantize_nf4
from qcompiler.quant.packing import pack_int4
from qcompiler.quant.uniform import dequantize_uint, expand_groups, quantize_uint

__all__ = ["Format", "FORMATS", "Problem", "make_problem", "make_x16", "within", "rounding_tol", "dequant_ref",
           "OPS", "REF"]

REF = torch.ops.qcompiler
OPS = torch.ops.qcompiler_triton

# Largest distance from a value in [-1, 1] to its nearest NF4 level: half the widest gap (-1 .. -0.696).
NF4_HALF_GAP = float((NF4_CODEBOOK[1:] - NF4_CODEBOOK[:-1]).max()) / 2


@dataclass(frozen=True)
class Format:
    name: str
    nf4: bool
    bits: int = 4
    group: int = 128
    symmetric: bool = True
    double_quant: bool = False


# Group sizes: 128 and 64 are what the schemes use (one scale per tile in the kernels); 48 and 50
# are not multiples of any tile width, so the kernels gather a scale per element.
FORMATS = {f.name: f for f in [
    Format("w4-g128", False, 4, 128),
    Format("w4-g48-asym", False, 4, 48, symmetric=False),
    Format("w8-channel", False, 8, 0),
    Format("w8-g64-asym", False, 8, 64, symmetric=False),
    Format("nf4-b64", True, group=64),
    Format("nf4-b64-dq", True, group=64, double_quant=True),
    Format("nf4-b50-dq", True, group=50, double_quant=True),
]}


@dataclass
class Problem:
    w: torch.Tensor            # float32 [N, K], the float weight
    w_deq: torch.Tensor        # float64 [N, K], what the stored format decodes to
    step: torch.Tensor         # float64 [N, K], bound on |w - w_deq| per element
    bias: Optional[torch.Tensor]
    operand: Callable[[], WeightOperand]
    ref_op: Callable[[torch.Tensor], torch.Tensor]     # the reference op on x
    triton_op: Callable[[torch.Tensor], torch.Tensor]  # the qcompiler_triton op on x


def make_x16(m: int, k: int, dtype: torch.dtype, seed: int, lead=()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, m, k, generator=g).to(dtype).to(DEVICE)


def make_problem(fmt: Format, n: int, k: int, dtype: torch.dtype, seed: int = 0, bias: bool = True) -> Problem:
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.05).to(DEVICE)
    b = (torch.randn(n, generator=g) * 0.1).to(dtype).to(DEVICE) if bias else None
    if not fmt.nf4:
        q = quantize_uint(w, fmt.bits, fmt.group, fmt.symmetric)
        qw = pack_int4(q.codes) if fmt.bits == 4 else q.codes
        w_deq = dequantize_uint(q.codes, q.scales, q.zeros, fmt.bits, q.group_size).double()
        step = expand_groups(q.scales.double(), q.group_size, k) / 2  # round to nearest: half a step
        args = (qw, q.scales, q.zeros)
        return Problem(
            w, w_deq, step, b,
            lambda: uint_operand(qw, q.scales, q.zeros, fmt.bits, q.group_size, k, w.device),
            lambda x: REF.weight_only_linear(x, *args, b, fmt.bits, q.group_size),
            lambda x: OPS.weight_only_uint_linear(x, *args, b, fmt.bits, q.group_size))
    codes, absmax, blk = quantize_nf4(w, fmt.group)
    qw = pack_int4(codes)
    if fmt.double_quant:
        aq, a2, off = double_quantize(absmax)
        am = REF.dequantize_blockwise_int8(aq, a2, off, DOUBLE_QUANT_BLOCK)
        kern = (aq, a2, off, blk, DOUBLE_QUANT_BLOCK)
    else:
        am, kern = absmax, (absmax, None, None, blk, 1)
    w_deq = dequantize_nf4(codes, am, blk).double()
    # nearest level of w / absmax, then scaled by the (possibly 8-bit) absmax actually stored
    step = (NF4_HALF_GAP * expand_groups(absmax.double(), blk, k)
            + (w_deq - dequantize_nf4(codes, absmax, blk).double()).abs())
    return Problem(
        w, w_deq, step, b,
        lambda: nf4_operand(qw, kern[0], kern[1], kern[2], kern[3], kern[4], k, w.device),
        lambda x: REF.nf4_linear(x, qw, am, b, blk),
        lambda x: OPS.weight_only_nf4_linear(x, qw, kern[0], kern[1], kern[2], b, kern[3], kern[4]))


def rounding_tol(x: torch.Tensor, p: Problem, y_ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float rounding only: W rounded to x's dtype on the tensor-core and cuBLAS paths (eps/2 of
    each |w|; eps/2 more where cuBLAS reduces partial sums in 16 bits), float32 sums over K
    (2**-22 K), the 16-bit output (eps |y|: one rounding + the interpreter's bf16 truncation)."""
    eps = torch.finfo(dtype).eps
    mag = x.double().abs().reshape(-1, x.shape[-1]) @ p.w_deq.abs().t()
    k = x.shape[-1]
    return eps * y_ref.abs() + (eps + 2.0 ** -22 * k) * mag


def within(y: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor) -> None:
    err = (y.double().reshape(ref.shape) - ref).abs()
    assert torch.isfinite(y).all()
    assert (err <= tol).all(), f"max err {err.max().item():.3g}, worst excess {(err - tol).max().item():.3g}"


def dequant_ref(p: Problem, x: torch.Tensor) -> torch.Tensor:
    """float64 ``x @ W_deq.T + b``, 2-D."""
    y = x.double().reshape(-1, x.shape[-1]) @ p.w_deq.t()
    return y + p.bias.double() if p.bias is not None else y
