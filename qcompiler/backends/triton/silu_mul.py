"""``silu(g) * u`` of a gated MLP, rounded as PyTorch's eager ops round it.

A Llama MLP computes ``down(silu(gate(x)) * up(x))``. With gate and up in one linear (sibling
fusion), ``y = [g | u]`` and the product is two eager ops, each rounding to the 16-bit dtype:
``s = silu(g)`` (CUDA: ``g / (1 + expf(-g))`` in float32, then rounded) and ``s * u`` (the float32
product of two 16-bit values, exact, then rounded). :func:`silu_mul_rounded` is that arithmetic
as a ``@triton.jit`` helper, used by the gated int8 GEMM's epilogue
(:mod:`.int8_linear_gated_tma`) and by :func:`silu_mul`, the one-launch elementwise kernel for
the shapes that GEMM does not take.

On the GPU (``EXACT``) the helper uses libdevice's ``expf`` (what CUDA's ``expf`` is), an ``add.rn``
in inline PTX (so the compiler cannot contract ``1 + e`` with the last multiply inside ``expf``)
and ``div.rn``: the same float32 operations as PyTorch's CUDA kernel, so the same 16-bit results.
The CPU interpreter has neither libdevice nor inline asm: it takes numpy's float32 ``exp``, which
may differ from torch's CPU ``exp`` in the last float32 bit (rarely one 16-bit step after rounding).
:func:`silu_mul` therefore runs torch's own ops off CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import interpreting

__all__ = ["silu_mul_rounded", "silu_mul", "launch_silu_mul"]

try:  # triton >= 3.0
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - the interpreter path needs no libdevice
    libdevice = None


@triton.jit
def _one_plus_rn(e):
    """``1 + e`` rounded on its own (never contracted into an FMA)."""
    return tl.inline_asm_elementwise("add.rn.f32 $0, $1, 0f3F800000;", "=f,f", [e],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def silu_mul_rounded(g, u, out_dtype: tl.constexpr, EXACT: tl.constexpr):
    """``(silu(g16) rounded) * u16``, rounded to ``out_dtype``; ``g``, ``u``: the float32 linear
    outputs, rounded to ``out_dtype`` first as the linear's own output would be."""
    gf = g.to(out_dtype).to(tl.float32)
    uf = u.to(out_dtype).to(tl.float32)
    if EXACT:
        s = tl.math.div_rn(gf, _one_plus_rn(libdevice.exp(-gf)))
    else:
        s = gf / (1.0 + tl.exp(-gf))
    return (s.to(out_dtype).to(tl.float32) * uf).to(out_dtype)


@triton.jit
def _silu_mul_kernel(y_ptr, out_ptr, M, H, stride_ym, stride_yn, stride_om, stride_on,
                     EXACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = (offs_m[:, None] < M) & (offs_h[None, :] < H)
    rows = y_ptr + offs_m[:, None] * stride_ym
    g = tl.load(rows + offs_h[None, :] * stride_yn, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(rows + (offs_h[None, :] + H) * stride_yn, mask=ok, other=0.0).to(tl.float32)
    out = silu_mul_rounded(g, u, out_ptr.dtype.element_ty, EXACT)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_h[None, :] * stride_on, out, mask=ok)


def launch_silu_mul(y2: Tensor, split: int) -> Tensor:
    """The elementwise kernel on a 2-D ``y2 [M, 2 * split]`` (any device the kernels run on)."""
    m = y2.shape[0]
    out = torch.empty((m, split), dtype=y2.dtype, device=y2.device)
    if m and split:
        block_m, block_h = (1, 1024) if m <= 4 else (8, 256)
        grid = (triton.cdiv(m, block_m), triton.cdiv(split, block_h))
        _silu_mul_kernel[grid](y2, out, m, split, y2.stride(0), y2.stride(1), out.stride(0), out.stride(1),
                               EXACT=not interpreting(), BLOCK_M=block_m, BLOCK_H=block_h, num_warps=4)
    return out


def silu_mul(y: Tensor, split: int) -> Tensor:
    """``silu(y[..., :split]) * y[..., split:]`` for ``y [..., 2 * split]``: one Triton launch on
    CUDA (the same 16-bit values as the two torch ops), the torch ops themselves elsewhere."""
    if y.shape[-1] != 2 * split:
        raise ValueError(f"silu_mul: y has {y.shape[-1]} columns, not 2 x {split}")
    if not y.is_cuda or interpreting() or y.dtype not in (torch.float16, torch.bfloat16):
        return torch.nn.functional.silu(y[..., :split]) * y[..., split:]
    return launch_silu_mul(y.reshape(-1, 2 * split), split).reshape(*y.shape[:-1], split)
