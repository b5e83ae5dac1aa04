"""A weight-only quantized weight as the Triton kernels see it, and the ``@triton.jit`` helpers that
turn its codes into values. Shared by the small-M GEMV (:mod:`.weight_only_gemv`) and the
dequantize kernel (:mod:`.dequantize_weight`).

Two formats (layouts as in :mod:`qcompiler.ops.weight_only`):

* ``FMT_UINT``: ``W[n, k] = (q[n, k] - z[n, k // g]) * s[n, k // g]``, 8-bit codes one per byte or
  4-bit codes two per byte (even k in the low nibble), ``z`` stored (uint8) or ``2^(bits-1)``;
* ``FMT_NF4``:  ``W[n, k] = NF4_CODEBOOK[q[n, k]] * absmax[n, k // b]``; the absmax values either
  float32 or double-quantized (int8 codes, one float32 scale per ``absmax_block`` of them in the
  flattened ``[N, G]`` order, one float32 offset): ``code * scale / 127 + offset``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.quant.nf4 import NF4_CODEBOOK

__all__ = ["FMT_UINT", "FMT_NF4", "WeightOperand", "uint_operand", "nf4_operand", "int8_signed_operand",
           "per_tile", "codebook",
           "code_value", "group_scale"]

FMT_UINT, FMT_NF4 = 0, 1

_CODEBOOKS: dict[tuple, Tensor] = {}


def codebook(device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """The NF4 levels on ``device``, rounded (to nearest) to ``dtype``: a constant made once per
    (device, dtype). ``lower-triton`` hands lowered graphs their own copies as buffers instead, so
    a compiled graph never creates one inside a CUDA graph's memory pool; this cache serves direct
    calls of the launchers."""
    cb = _CODEBOOKS.get((device, dtype))
    if cb is None:
        cb = _CODEBOOKS[(device, dtype)] = NF4_CODEBOOK.to(device=device, dtype=dtype)
    return cb


@dataclass(frozen=True)
class WeightOperand:
    """Validated, contiguous tensors plus the constexprs the kernels are specialised on."""

    qweight: Tensor                  # uint8 [N, ceil(K / pack)]
    scales: Tensor                   # float32 [N, G] (UINT steps, NF4 absmax) or int8 [N, G] (NF4 + dq)
    zeros: Optional[Tensor]          # uint8 [N, G] (UINT asymmetric) or None
    dq_scale: Optional[Tensor]       # float32 [ceil(N * G / dq_block)] (NF4 + dq) or None
    dq_offset: Optional[Tensor]      # float32 [1] (NF4 + dq) or None
    codebook: Optional[Tensor]       # float32 [16] (NF4) or None
    codebook_half: Optional[Tensor]  # [16] in x's dtype (NF4, tensor-core path) or None: made on demand
    n: int
    k: int
    groups: int                      # G = ceil(K / group)
    group: int                       # g, the effective group (block) size, 1 <= g <= K
    fmt: int
    pack: int                        # codes per byte: 2 (4-bit) or 1 (8-bit)
    zero: int                        # UINT's implicit zero point 2^(bits-1); 0 for NF4
    dq_block: int                    # absmax codes per dq scale; 1 when not double-quantized
    signed: bool = False             # codes stored as int8 (two's complement): q + 128 = code ^ 0x80
    scale_div: float = 1.0           # the step is scales / scale_div (int8-outlier: w_scale / 127)

    def key(self) -> tuple:
        """Everything besides x's rows and dtype that selects a compiled kernel / a tuned config."""
        return (self.n, self.k, self.group, self.fmt, self.pack, self.zero, self.zeros is not None,
                self.dq_scale is not None, self.dq_block, self.signed, self.scale_div)

    def args(self, dummy: Tensor, half: Optional[torch.dtype] = None) -> tuple:
        """Pointer arguments, in kernel order: w, s, z, codebook (float32), [codebook in ``half``,]
        dq scale, dq offset."""
        cb = (self.codebook if self.codebook is not None else dummy,)
        if half is not None:
            if self.codebook is None:
                cb += (dummy,)
            elif self.codebook_half is not None and self.codebook_half.dtype == half:
                cb += (self.codebook_half,)
            else:
                cb += (codebook(self.codebook.device, half),)
        return (self.qweight, self.scales, self.zeros if self.zeros is not None else dummy, *cb,
                self.dq_scale if self.dq_scale is not None else dummy,
                self.dq_offset if self.dq_offset is not None else dummy)

    def meta(self) -> dict:
        return dict(FMT=self.fmt, PACK=self.pack, ZERO=self.zero, HAS_ZEROS=self.zeros is not None,
                    DQ=self.dq_scale is not None, DQ_BLOCK=self.dq_block)


def _fail(what: str, msg: str):
    raise ValueError(f"{what}: {msg}")


def _c(t: Tensor) -> Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _check_common(what: str, qweight: Tensor, k: int, pack: int, group: int, device) -> tuple[int, int]:
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        _fail(what, f"qweight must be a 2-D uint8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
    if qweight.shape[1] != -(-k // pack):
        _fail(what, f"qweight {tuple(qweight.shape)} does not hold K={k} codes "
                    f"({pack} per byte: expected {-(-k // pack)} bytes per row)")
    if qweight.device != device:
        _fail(what, f"qweight is on {qweight.device}, x on {device}")
    if not 1 <= group <= max(k, 1):
        _fail(what, f"group size must lie in 1..K={k} (the effective size), got {group}")
    return qweight.shape[0], -(-k // group) if k else 0


def _check_groups(what: str, name: str, t: Tensor, dtype: torch.dtype, n: int, g: int, device) -> Tensor:
    if t.dtype != dtype or tuple(t.shape) != (n, g) or t.device != device:
        _fail(what, f"{name} must be {dtype} [{n}, {g}] on {device}, got {t.dtype} {tuple(t.shape)} "
                    f"on {t.device}")
    return _c(t)


def uint_operand(qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bits: int, group_size: int,
                 k: int, device) -> WeightOperand:
    """``qcompiler::weight_only_linear``'s weight operands (4- or 8-bit codes)."""
    what = "weight_only_uint_linear"
    if bits not in (4, 8):
        _fail(what, f"the kernels take 4- or 8-bit codes, got bits={bits}")
    pack = 8 // bits
    n, g = _check_common(what, qweight, k, pack, group_size, device)
    scales = _check_groups(what, "scales", scales, torch.float32, n, g, device)
    if zeros is not None:
        zeros = _check_groups(what, "zeros", zeros, torch.uint8, n, g, device)
    return WeightOperand(_c(qweight), scales, zeros, None, None, None, None, n, k, g, group_size, FMT_UINT,
                         pack, 2 ** (bits - 1), 1)


def int8_signed_operand(wq: Tensor, w_scale: Tensor, device) -> WeightOperand:
    """int8-outlier's weight, ``W = wq * w_scale / 127`` (int8 ``[N, K]``, one float32 scale per
    row), as an 8-bit UINT operand: the uint8 view of ``wq`` with zero point 128 and the kernels
    flipping the sign bit (``code ^ 0x80 = q + 128``). No copy is made."""
    what = "int8_outlier_linear"
    if wq.dtype != torch.int8 or wq.dim() != 2 or wq.device != device:
        _fail(what, f"wq must be a 2-D int8 tensor on {device}, got {wq.dtype} {tuple(wq.shape)} on {wq.device}")
    n, k = wq.shape
    if w_scale.dtype != torch.float32 or w_scale.numel() != n or w_scale.device != device:
        _fail(what, f"w_scale must be float32 with one value per row ({n}) on {device}, got "
                    f"{w_scale.dtype} {tuple(w_scale.shape)} on {w_scale.device}")
    scales = _c(w_scale.reshape(n, 1))
    return WeightOperand(_c(wq).view(torch.uint8), scales, None, None, None, None, None, n, k, 1 if k else 0,
                         max(k, 1), FMT_UINT, 1, 128, 1, signed=True, scale_div=127.0)


def nf4_operand(qweight: Tensor, absmax: Tensor, absmax_scale: Optional[Tensor],
                absmax_offset: Optional[Tensor], block_size: int, absmax_block: int, k: int,
                device, levels: Optional[Tensor] = None, levels_half: Optional[Tensor] = None) -> WeightOperand:
    """``qcompiler::nf4_linear``'s operands; with ``absmax_scale``/``absmax_offset`` the absmax is
    ``dequantize_blockwise_int8(absmax, absmax_scale, absmax_offset, absmax_block)``, fused.
    ``levels`` / ``levels_half``: the NF4 table in float32 / x's dtype (default: :func:`codebook`)."""
    what = "weight_only_nf4_linear"
    n, g = _check_common(what, qweight, k, 2, block_size, device)
    dq = absmax_scale is not None
    if dq != (absmax_offset is not None):
        _fail(what, "absmax_scale and absmax_offset come together (double quantization) or not at all")
    absmax = _check_groups(what, "absmax", absmax, torch.int8 if dq else torch.float32, n, g, device)
    if dq:
        if absmax_block < 1:
            _fail(what, f"absmax_block must be >= 1, got {absmax_block}")
        blocks = -(-n * g // absmax_block)
        if (absmax_scale.dtype != torch.float32 or absmax_scale.numel() != blocks
                or absmax_offset.dtype != torch.float32 or absmax_offset.numel() != 1):
            _fail(what, f"double quantization needs float32 absmax_scale [{blocks}] and absmax_offset "
                        f"[1], got {absmax_scale.dtype} {tuple(absmax_scale.shape)} and "
                        f"{absmax_offset.dtype} {tuple(absmax_offset.shape)}")
        absmax_scale, absmax_offset = _c(absmax_scale.reshape(-1)), _c(absmax_offset.reshape(-1))
    if levels is not None and (levels.dtype != torch.float32 or levels.numel() != 16 or levels.device != device):
        _fail(what, f"the NF4 levels must be float32 [16] on {device}, got {levels.dtype} "
                    f"{tuple(levels.shape)} on {levels.device}")
    return WeightOperand(_c(qweight), absmax, None, absmax_scale, absmax_offset,
                         levels if levels is not None else codebook(qweight.device), levels_half,
                         n, k, g, block_size, FMT_NF4, 2, 0, absmax_block if dq else 1)


def per_tile(group: int, groups: int, block_k: int) -> bool:
    """Whether every ``BLOCK_K`` tile of K lies in one group, so that its scale (and zero point)
    is one value per output row and can be applied after the tile's dot product."""
    return groups <= 1 or group % block_k == 0


@triton.jit
def code_value(c, zf, cb_ptr, FMT: tl.constexpr):
    """Codes (int32, 0..255) -> float32 values before the group scale: ``q - z`` (UINT, with
    ``zf = z + 2**23``) or ``NF4_CODEBOOK[q]``. ``q | 0x4B000000`` is the float ``2**23 + q``
    exactly: an OR and a subtraction instead of an int-to-float conversion (a slower pipe)."""
    if FMT == 0:
        return (c | 0x4B000000).to(tl.float32, bitcast=True) - zf
    else:
        return tl.load(cb_ptr + c)


@triton.jit
def group_scale(s_ptr, z_ptr, dqs_ptr, idx, mask, dq_off,
                HAS_ZEROS: tl.constexpr, DQ: tl.constexpr, DQ_BLOCK: tl.constexpr, ZERO: tl.constexpr):
    """The scale and ``z + 2**23`` of the groups at flat indices ``idx = n * G + k // g`` (any
    shape); double-quantized absmax decoded as the reference does: ``code * scale / 127 + off``."""
    if DQ:
        code = tl.load(s_ptr + idx, mask=mask, other=0).to(tl.float32)
        s = code * tl.load(dqs_ptr + idx // DQ_BLOCK, mask=mask, other=0.0) / 127.0 + dq_off
    else:
        s = tl.load(s_ptr + idx, mask=mask, other=0.0)
    if HAS_ZEROS:
        zf = tl.load(z_ptr + idx, mask=mask, other=0).to(tl.float32) + 8388608.0
    else:
        zf = ZERO + 8388608.0
    return s, zf
