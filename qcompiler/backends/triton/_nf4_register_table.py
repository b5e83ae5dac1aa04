"""NF4 codes to their levels without a memory gather: a 16-entry table held in registers and read
with byte permutes (``prmt``), CUDA only (``tl.inline_asm_elementwise``).

Why: the one-row GEMV's gather ``tl.load(levels + code)`` is one load instruction per weight, and
the load/store unit, not HBM, then bounds the NF4 kernel (~22% of the copy bandwidth on an H200).
Here each level is the float16 nearest the NF4 level (what the tensor-core path multiplies with);
its low and high bytes come from two 16-byte tables, four registers each. ``prmt`` picks any byte
of two registers by a 3-bit index, so a code's low 3 bits select among entries 0-7 and 8-15 (two
``prmt``) and bit 3 chooses between the two (``lop3`` under a byte mask, itself one ``prmt`` in
sign-replicate mode). Per 8 codes (one 32-bit register): 23 integer instructions, then 8
float16-to-float32 converts - about 3 instructions a weight instead of a load and its address.
The tensor-core form (:func:`nf4_nibbles_16_asm`) keeps the levels in x's 16-bit type (float16 or
bfloat16 tables), two to a register, as its ``tl.dot`` operand: no convert at all.

The program is a short list of instructions (:data:`PROGRAM`), turned into PTX by :func:`ptx` and
run bit-exactly on the CPU by :func:`emulate`, which is what the CI tests check.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qcompiler.quant.nf4 import NF4_CODEBOOK

__all__ = ["PROGRAM", "ptx", "emulate", "table_words", "nf4_nibbles_f32_asm", "nf4_nibbles_16_asm"]


def table_words(half: str = "f16") -> dict[str, int]:
    """``TL0..TL3`` (low bytes) and ``TH0..TH3`` (high bytes) of the NF4 levels rounded to nearest
    float16 (``half="f16"``) or bfloat16 (``"bf16"``); entry e in byte ``e % 4`` of word ``e // 4``."""
    dt = torch.float16 if half == "f16" else torch.bfloat16
    bits = [int(v) & 0xFFFF for v in NF4_CODEBOOK.to(dt).view(torch.int16).to(torch.int32)]
    out = {}
    for w in range(4):
        out[f"TL{w}"] = sum((bits[4 * w + i] & 0xFF) << (8 * i) for i in range(4))
        out[f"TH{w}"] = sum((bits[4 * w + i] >> 8) << (8 * i) for i in range(4))
    return out


# (op, destination, sources...): r is the input (8 codes: byte j = codes 2j low, 2j + 1 high).
# Half "a" is codes n0..n3 (bits 0-15 of r), half "b" codes n4..n7 (bits 16-31).
def _program(out: str) -> list[tuple]:
    p = [("shr", "t", "r", 16), ("and", "sa", "r", 0x7777), ("and", "sb", "t", 0x7777),
         ("shl", "ua", "r", 4), ("prmt", "ma", "ua", "r", 0xD9C8),  # byte i = 0xFF if code i >= 8
         ("shl", "ub", "t", 4), ("prmt", "mb", "ub", "t", 0xD9C8)]
    for h in "ab":
        for plane in "LH":
            p += [("prmt", f"{plane}0{h}", f"T{plane}0", f"T{plane}1", f"s{h}"),   # entries 0-7
                  ("prmt", f"{plane}1{h}", f"T{plane}2", f"T{plane}3", f"s{h}"),   # entries 8-15
                  ("lop3", f"P{plane}{h}", f"{plane}0{h}", f"{plane}1{h}", f"m{h}", 0xD8)]  # m ? 1 : 0
        if out == "f32":  # (code 0, code 1) and (code 2, code 3) of this half, converted below
            p += [("prmt", f"w0{h}", f"PL{h}", f"PH{h}", 0x5140), ("prmt", f"w1{h}", f"PL{h}", f"PH{h}", 0x7362)]
        else:  # 16-bit outputs: (code 0, code 2) = low nibbles, (code 1, code 3) = high nibbles
            p += [("prmt", f"lo{h}", f"PL{h}", f"PH{h}", 0x6240), ("prmt", f"hi{h}", f"PL{h}", f"PH{h}", 0x7351)]
    return p


PROGRAM = _program("f32")
# float32 outputs: $0-$3 = low nibbles of bytes 0-3 (codes n0, n2, n4, n6), $4-$7 = high nibbles.
_OUTPUTS_F32 = [("w0a", 0, 4), ("w1a", 1, 5), ("w0b", 2, 6), ("w1b", 3, 7)]  # (word, low half -> $i, high -> $j)
# 16-bit outputs, two per register: $0, $1 = low nibbles (n0 n2, n4 n6), $2, $3 = high nibbles.
_OUTPUTS_16 = [("loa", 0), ("lob", 1), ("hia", 2), ("hib", 3)]


def _regs(prog) -> list[str]:
    names = []
    for op in prog:
        if op[1] not in names:
            names.append(op[1])
    return names


def ptx(out: str = "f32") -> str:
    """The inline PTX. ``out="f32"``: input ``$8``, float32 outputs ``$0..$7`` (float16 levels,
    converted); ``"f16"`` / ``"bf16"``: input ``$4``, outputs ``$0..$3`` holding two levels each."""
    prog = _program(out)
    tw = table_words("f16" if out == "f32" else out)
    inp = "$8" if out == "f32" else "$4"
    lines = ["{", ".reg .b32 " + ", ".join(f"q_{r}" for r in [*tw, *_regs(prog)]) + ";"]
    if out == "f32":
        lines.append(".reg .b16 q_h0, q_h1;")
    lines += [f"mov.b32 q_{k}, {v:#010x};" for k, v in tw.items()]

    def src(s):  # registers get a prefix: no clash with PTX names
        return inp if s == "r" else (f"{s:#x}" if isinstance(s, int) else f"q_{s}")

    for op, d, *a in prog:
        if op in ("shr", "shl"):
            lines.append(f"{op}.b32 {src(d)}, {src(a[0])}, {a[1]};")
        elif op == "and":
            lines.append(f"and.b32 {src(d)}, {src(a[0])}, {src(a[1])};")
        elif op == "prmt":
            lines.append(f"prmt.b32 {src(d)}, {src(a[0])}, {src(a[1])}, {src(a[2])};")
        elif op == "lop3":
            lines.append(f"lop3.b32 {src(d)}, {src(a[0])}, {src(a[1])}, {src(a[2])}, {a[3]:#x};")
    if out == "f32":
        for word, lo, hi in _OUTPUTS_F32:
            lines += [f"mov.b32 {{q_h0, q_h1}}, q_{word};", f"cvt.f32.f16 ${lo}, q_h0;", f"cvt.f32.f16 ${hi}, q_h1;"]
    else:
        lines += [f"mov.b32 ${i}, q_{word};" for word, i in _OUTPUTS_16]
    lines.append("}")
    return " ".join(lines)


def _prmt(a: int, b: int, c: int) -> int:
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        sel = (c >> (4 * i)) & 0xF
        byte = src[sel & 7]
        if sel & 8:
            byte = 0xFF if byte & 0x80 else 0x00
        out |= byte << (8 * i)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for bit in range(32):
        idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        out |= ((lut >> idx) & 1) << bit
    return out


def emulate(r: int, out: str = "f32") -> list[int]:
    """The 16-bit level patterns the PTX of ``out`` produces for the input word ``r``, in output
    order: ``f32``: ``$0..$7`` before the convert; ``f16`` / ``bf16``: the halves of ``$0..$3``, low first."""
    env = {**table_words("f16" if out == "f32" else out), "r": r & 0xFFFFFFFF}

    def val(s):
        return s if isinstance(s, int) else env[s]

    for op, d, *a in _program(out):
        if op == "shr":
            env[d] = val(a[0]) >> a[1]
        elif op == "shl":
            env[d] = (val(a[0]) << a[1]) & 0xFFFFFFFF
        elif op == "and":
            env[d] = val(a[0]) & val(a[1])
        elif op == "prmt":
            env[d] = _prmt(val(a[0]), val(a[1]), val(a[2]))
        else:
            env[d] = _lop3(val(a[0]), val(a[1]), val(a[2]), a[3])
    if out == "f32":
        res = [0] * 8
        for word, lo, hi in _OUTPUTS_F32:
            res[lo], res[hi] = env[word] & 0xFFFF, env[word] >> 16
        return res
    return [h for word, _ in _OUTPUTS_16 for h in (env[word] & 0xFFFF, env[word] >> 16)]


_PTX = tl.constexpr(ptx("f32"))  # a jit function reads only constexpr globals
_PTX_F16 = tl.constexpr(ptx("f16"))
_PTX_BF16 = tl.constexpr(ptx("bf16"))


@triton.jit
def nf4_nibbles_f32_asm(b):
    """Packed NF4 bytes -> (float32 level of the low nibble, of the high nibble), the levels
    rounded to float16. CUDA only."""
    return tl.inline_asm_elementwise(
        asm=_PTX, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r", args=[b], dtype=(tl.float32, tl.float32),
        is_pure=True, pack=4)


@triton.jit
def nf4_nibbles_16_asm(b, IS_F16: tl.constexpr):
    """Packed NF4 bytes -> (levels of the low nibbles, of the high nibbles) rounded to float16
    (``IS_F16``) or bfloat16: the tensor-core operand. CUDA only."""
    if IS_F16:
        res = tl.inline_asm_elementwise(
            asm=_PTX_F16, constraints="=r,=r,=r,=r,r", args=[b], dtype=(tl.float16, tl.float16),
            is_pure=True, pack=4)
    else:
        res = tl.inline_asm_elementwise(
            asm=_PTX_BF16, constraints="=r,=r,=r,=r,r", args=[b], dtype=(tl.bfloat16, tl.bfloat16),
            is_pure=True, pack=4)
    return res
