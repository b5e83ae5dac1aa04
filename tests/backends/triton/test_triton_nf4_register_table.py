"""The in-register NF4 table (``_nf4_register_table``): its instruction list, run bit-exactly on
the CPU, gives float16(NF4 level) for every code in every position; on a GPU the one-row GEMV with
it matches the float64 reference within the float16 rounding of W."""

from __future__ import annotations

import random

import pytest
import torch
from weight_only_problems import FORMATS, dequant_ref, make_problem, make_x16, rounding_tol, within

from qcompiler.backends.triton._magic_dequant import asm_available
from qcompiler.backends.triton._nf4_register_table import emulate, ptx
from qcompiler.backends.triton.weight_only_gemv_row import weight_only_gemv_row
from qcompiler.quant.nf4 import NF4_CODEBOOK

HALF_BITS = [int(v) for v in NF4_CODEBOOK.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF]


def _expected(r: int) -> list[int]:
    nib = [(r >> (4 * i)) & 0xF for i in range(8)]
    # $0-$3: low nibbles of bytes 0-3, $4-$7: high nibbles.
    return [HALF_BITS[nib[i]] for i in (0, 2, 4, 6, 1, 3, 5, 7)]


def test_every_code_in_every_position():
    for code in range(16):
        for pos in range(8):
            r = code << (4 * pos)
            assert emulate(r) == _expected(r), (code, pos)


def test_random_words():
    rng = random.Random(0)
    for _ in range(2000):
        r = rng.getrandbits(32)
        assert emulate(r) == _expected(r)


def test_ptx_names_every_output_once():
    text = ptx()
    for i in range(8):
        assert text.count(f"${i},") == 1  # each output written by exactly one convert
    assert "$8" in text


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
