"""The in-register NF4 table (``_nf4_register_table``): its instruction lists, run bit-exactly on
the CPU, give float16 / bfloat16(NF4 level) for every code in every position; on a GPU the one-row
GEMV and the tensor-core GEMV with them match the float64 reference within the 16-bit rounding of W."""

from __future__ import annotations

import random

import pytest
import torch
from weight_only_problems import FORMATS, dequant_ref, make_problem, make_x16, rounding_tol, within

from qcompiler.backends.triton._magic_dequant import asm_available
from qcompiler.backends.triton._nf4_register_table import emulate, ptx
from qcompiler.backends.triton.weight_only_gemv import weight_only_gemv
from qcompiler.backends.triton.weight_only_gemv_row import weight_only_gemv_row
from qcompiler.quant.nf4 import NF4_CODEBOOK

def _bits(dtype) -> list[int]:
    return [int(v) & 0xFFFF for v in NF4_CODEBOOK.to(dtype).view(torch.int16).to(torch.int32)]


HALF_BITS, BF16_BITS = _bits(torch.float16), _bits(torch.bfloat16)


def _expected(r: int, out: str) -> list[int]:
    nib = [(r >> (4 * i)) & 0xF for i in range(8)]
    if out == "f32":  # $0-$3: low nibbles of bytes 0-3, $4-$7: high nibbles (float16 levels)
        return [HALF_BITS[nib[i]] for i in (0, 2, 4, 6, 1, 3, 5, 7)]
    table = HALF_BITS if out == "f16" else BF16_BITS
    return [table[nib[i]] for i in (0, 2, 4, 6, 1, 3, 5, 7)]  # lo plane (2 registers), then hi plane


OUTS = ["f32", "f16", "bf16"]


@pytest.mark.parametrize("out", OUTS)
def test_every_code_in_every_position(out):
    for code in range(16):
        for pos in range(8):
            r = code << (4 * pos)
            assert emulate(r, out) == _expected(r, out), (code, pos)


@pytest.mark.parametrize("out", OUTS)
def test_random_words(out):
    rng = random.Random(0)
    for _ in range(1000):
        r = rng.getrandbits(32)
        assert emulate(r, out) == _expected(r, out)


def test_ptx_writes_every_output_once():
    text = ptx("f32")
    for i in range(8):
        assert text.count(f"${i},") == 1  # each output written by exactly one convert
    assert "$8" in text
    for out in ("f16", "bf16"):
        text = ptx(out)
        assert all(text.count(f"${i},") == 1 for i in range(4)) and "$4" in text


@pytest.mark.skipif(not asm_available(), reason="inline PTX (prmt) needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fmt", ["nf4-b64", "nf4-b64-dq"], ids=str)
@pytest.mark.parametrize("config", [dict(BLOCK_N=16, BLOCK_KB=64, SPLIT_K=1),
                                    dict(BLOCK_N=64, BLOCK_KB=128, SPLIT_K=4),
                                    dict(BLOCK_N=8, BLOCK_KB=256, SPLIT_K=1, num_warps=2)],
                         ids=lambda c: "n{BLOCK_N}kb{BLOCK_KB}s{SPLIT_K}".format(**c))
def test_row_nf4_register_table(fmt, dtype, config):
    p = make_problem(FORMATS[fmt], 40, 301, dtype, seed=21)
    x = make_x16(1, 301, dtype, seed=22)
    y = weight_only_gemv_row(x, p.operand(), p.bias, config={**config, "ASM": True})
    ref = dequant_ref(p, x)
    within(y, ref, rounding_tol(x, p, ref, dtype))  # float16 levels: eps/2 of each |w| at most


@pytest.mark.skipif(not asm_available(), reason="inline PTX (prmt) needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [3, 16])
@pytest.mark.parametrize("fmt", ["nf4-b64", "nf4-b64-dq"], ids=str)
def test_dot_nf4_register_table(fmt, m, dtype):
    # The tensor-core form: levels in x's dtype from the table, the same bound as the gather.
    p = make_problem(FORMATS[fmt], 40, 301, dtype, seed=m)
    x = make_x16(m, 301, dtype, seed=m + 1)
    y = weight_only_gemv(x, p.operand(), p.bias, dot=True, config=dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=2, ASM=2))
    ref = dequant_ref(p, x)
    within(y, ref, rounding_tol(x, p, ref, dtype))
