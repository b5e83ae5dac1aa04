"""Codes to floats without an int-to-float convert (I2F runs on a slow pipe): the code's bits are
placed under a fixed exponent, so the float *is* ``offset + q``; subtracting ``offset + z`` gives the
exact small integer ``q - z``.

* float32: ``q | 0x4B000000`` is ``2**23 + q`` (any 8-bit q);
* float16: ``q | 0x6400`` is ``1024 + q`` (q < 1024), two values per 32-bit register.

With ``ASM`` (CUDA only) the packed bytes are rearranged by ``prmt`` (one instruction per float32,
one per two float16), the way Marlin-style kernels do it; without it the same numbers come from
Triton integer ops, which is what the CPU interpreter (CI) runs. ``FLIP`` reads the bytes as
two's-complement int8 (``code ^ 0x80 = q + 128``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qcompiler.backends.triton._config import interpreting

__all__ = ["asm_available", "magic_bytes_f32", "magic_nibbles_f32", "magic_bytes_f16", "magic_nibbles_f16"]


def asm_available() -> bool:
    """Inline PTX runs on NVIDIA GPUs only, never in the interpreter."""
    return not interpreting() and torch.cuda.is_available() and torch.version.hip is None


@triton.jit
def magic_bytes_f32(b, ASM: tl.constexpr, FLIP: tl.constexpr):
    """uint8 codes -> float32 ``2**23 + b`` (``2**23 + (b ^ 0x80)`` with ``FLIP``)."""
    if ASM:
        # One PRMT per byte: byte i of the packed register under the exponent byte 0x4B.
        if FLIP:
            return tl.inline_asm_elementwise(
                asm="{ .reg .b32 m, v; mov.b32 m, 0x4B000000; xor.b32 v, $4, 0x80808080;"
                    " prmt.b32 $0, v, m, 0x7650; prmt.b32 $1, v, m, 0x7651;"
                    " prmt.b32 $2, v, m, 0x7652; prmt.b32 $3, v, m, 0x7653; }",
                constraints="=r,=r,=r,=r,r", args=[b], dtype=tl.float32, is_pure=True, pack=4)
        return tl.inline_asm_elementwise(
            asm="{ .reg .b32 m; mov.b32 m, 0x4B000000;"
                " prmt.b32 $0, $4, m, 0x7650; prmt.b32 $1, $4, m, 0x7651;"
                " prmt.b32 $2, $4, m, 0x7652; prmt.b32 $3, $4, m, 0x7653; }",
            constraints="=r,=r,=r,=r,r", args=[b], dtype=tl.float32, is_pure=True, pack=4)
    bi = b.to(tl.int32)
    if FLIP:
        bi = bi ^ 0x80  # xor + or: one LOP3
    return (bi | 0x4B000000).to(tl.float32, bitcast=True)


@triton.jit
def magic_nibbles_f32(b, ASM: tl.constexpr):
    """Packed int4 bytes -> (float32 ``2**23 + low nibble``, ``2**23 + high nibble``)."""
    if ASM:
        # Both nibble planes of 4 bytes at once (and / shift+and on the whole register), then a
        # PRMT per value.
        return tl.inline_asm_elementwise(
            asm="{ .reg .b32 m, l, h; mov.b32 m, 0x4B000000;"
                " and.b32 l, $8, 0x0F0F0F0F; shr.b32 h, $8, 4; and.b32 h, h, 0x0F0F0F0F;"
                " prmt.b32 $0, l, m, 0x7650; prmt.b32 $1, l, m, 0x7651;"
                " prmt.b32 $2, l, m, 0x7652; prmt.b32 $3, l, m, 0x7653;"
                " prmt.b32 $4, h, m, 0x7650; prmt.b32 $5, h, m, 0x7651;"
                " prmt.b32 $6, h, m, 0x7652; prmt.b32 $7, h, m, 0x7653; }",
            constraints="=r,=r,=r,=r,=r,=r,=r,=r,r", args=[b], dtype=(tl.float32, tl.float32),
            is_pure=True, pack=4)
    bi = b.to(tl.int32)
    return (((bi & 0xF) | 0x4B000000).to(tl.float32, bitcast=True),
            ((bi >> 4) | 0x4B000000).to(tl.float32, bitcast=True))


@triton.jit
def magic_bytes_f16(b, ASM: tl.constexpr, FLIP: tl.constexpr):
    """uint8 codes -> float16 ``1024 + b`` (``1024 + (b ^ 0x80)`` with ``FLIP``)."""
    if ASM:
        # bytes [b0 b1 b2 b3] -> halves (0x64b0, 0x64b1), (0x64b2, 0x64b3): two PRMTs for 4 codes.
        if FLIP:
            return tl.inline_asm_elementwise(
                asm="{ .reg .b32 m, v; mov.b32 m, 0x64646464; xor.b32 v, $2, 0x80808080;"
                    " prmt.b32 $0, v, m, 0x4140; prmt.b32 $1, v, m, 0x4342; }",
                constraints="=r,=r,r", args=[b], dtype=tl.float16, is_pure=True, pack=4)
        return tl.inline_asm_elementwise(
            asm="{ .reg .b32 m; mov.b32 m, 0x64646464;"
                " prmt.b32 $0, $2, m, 0x4140; prmt.b32 $1, $2, m, 0x4342; }",
            constraints="=r,=r,r", args=[b], dtype=tl.float16, is_pure=True, pack=4)
    bi = b.to(tl.int32)
    if FLIP:
        bi = bi ^ 0x80
    return (bi | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def magic_nibbles_f16(b, ASM: tl.constexpr):
    """Packed int4 bytes -> (float16 ``1024 + low nibble``, ``1024 + high nibble``)."""
    if ASM:
        # [b0 b1 b2 b3] -> t = (b0, b1) and (b2, b3) as 16-bit lanes (PRMT), then per plane
        # (t & 0x000F000F) | 0x64006400 and ((t >> 4) & 0x000F000F) | 0x64006400 (LOP3s).
        return tl.inline_asm_elementwise(
            asm="{ .reg .b32 z, t0, t1, u0, u1; mov.b32 z, 0;"
                " prmt.b32 t0, $4, z, 0x4140; prmt.b32 t1, $4, z, 0x4342;"
                " and.b32 u0, t0, 0x000F000F; or.b32 $0, u0, 0x64006400;"
                " and.b32 u1, t1, 0x000F000F; or.b32 $1, u1, 0x64006400;"
                " shr.b32 t0, t0, 4; shr.b32 t1, t1, 4;"
                " and.b32 u0, t0, 0x000F000F; or.b32 $2, u0, 0x64006400;"
                " and.b32 u1, t1, 0x000F000F; or.b32 $3, u1, 0x64006400; }",
            constraints="=r,=r,=r,=r,r", args=[b], dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    bi = b.to(tl.int32)
    return (((bi & 0xF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True),
            ((bi >> 4) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True))
