"""The split-K GEMV's newer forms: fp16 magic-number dequantization straight into the tensor-core
operand (``ASM=1`` in Triton ops, ``ASM=2`` via ``prmt`` - CUDA only), and int8-outlier's signed
int8 weight with its fp16 outlier columns added in the epilogue, against float64 references.

K = 301, N = 40 as in ``test_triton_weight_only_gemv.py``; M = 1 (CUDA cores) and 3 / 16 (dot).
"""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE
from weight_only_problems import FORMATS, dequant_ref, make_problem, make_x16, rounding_tol, within

from qcompiler.backends.triton._weight_operand import int8_signed_operand
from qcompiler.backends.triton.weight_only_gemv import weight_only_gemv
from qcompiler.backends.triton._magic_dequant import asm_available

K, N = 301, 40
_PRMT = pytest.mark.skipif(not asm_available(), reason="inline PTX (prmt) needs a CUDA GPU")
ASM_LEVELS = [1, pytest.param(2, marks=pytest.mark.skipif(not asm_available(),
                                                         reason="inline PTX (prmt) needs a CUDA GPU"))]


@pytest.mark.parametrize("asm", ASM_LEVELS, ids=lambda a: f"asm{a}")
@pytest.mark.parametrize("m", [3, 16])
@pytest.mark.parametrize("fmt", ["w4-g128", "w8-channel", "w8-g64-asym"], ids=str)
def test_dot_fp16_magic(fmt, m, asm):
    # (1024 + q) - (1024 + z) in fp16 is exact: the same bound as the float32 form.
    dtype = torch.float16
    p = make_problem(FORMATS[fmt], N, K, dtype, seed=m)
    x = make_x16(m, K, dtype, seed=m + 1)
    y = weight_only_gemv(x, p.operand(), p.bias, dot=True,
                         config=dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=2, ASM=asm))
    ref = dequant_ref(p, x)
    within(y, ref, rounding_tol(x, p, ref, dtype))


def _int8_outlier_problem(n_out: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    wq = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    ws = torch.rand(N, generator=g) * 0.05 + 0.01
    idx = torch.randperm(K, generator=g)[:n_out].sort().values
    wq[:, idx] = 0
    wo = (torch.randn(N, n_out, generator=g) * 0.05).to(dtype)
    b = (torch.randn(N, generator=g) * 0.1).to(dtype)
    w = wq.double() * (ws.double() / 127.0)[:, None]
    w[:, idx] = wo.double()
    return tuple(t.to(DEVICE) for t in (wq, ws, idx, wo, b, w))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,asm", [(1, 0), (5, 0), (5, 1), (16, 1), pytest.param(5, 2, marks=_PRMT)])
@pytest.mark.parametrize("n_out", [0, 4, 20], ids=lambda n: f"out{n}")
def test_signed_int8_with_outliers(n_out, m, asm, dtype):
    wq, ws, idx, wo, b, w = _int8_outlier_problem(n_out, dtype, seed=n_out + m)
    x = make_x16(m, K, dtype, seed=m)
    y = weight_only_gemv(x, int8_signed_operand(wq, ws, x.device), b, idx if n_out else None,
                         wo if n_out else None, dot=m > 1, config=dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=3, ASM=asm))
    ref = x.double() @ w.t() + b.double()
    eps = torch.finfo(dtype).eps
    # W rounded to x's dtype on the tensor cores (eps/2 |w|), float32 sums, the 16-bit output.
    tol = eps * ref.abs() + (eps + 2.0 ** -22 * K) * (x.double().abs() @ w.abs().t())
    within(y, ref, tol)
