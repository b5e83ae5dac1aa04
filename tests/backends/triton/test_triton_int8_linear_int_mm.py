"""The large-M int8 GEMM through ``torch._int_mm`` + the Triton epilogue kernel, against the
reference op and against the Triton GEMM (same int32 accumulator, same epilogue).

Tolerance vs the reference as in ``test_triton_int8_linear.py``: the int32 product is exact on
both sides, what remains is each side's rounding to 16 bits and the outlier product kept in
float32 by the kernel (rounded to 16 bits by the reference). Against the Triton GEMM: equal up to
the outlier ``tl.dot``'s last-bit rounding (1 ulp of the 16-bit output).
``torch._int_mm`` runs on the CPU too (torch >= 2.2), so these tests run in CI's interpreter.
"""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE, eps, make_static_weights, make_x

from qcompiler.backends.triton import int8_linear_int_mm as int_mm_mod
from qcompiler.backends.triton.int8_linear import int8_linear
from qcompiler.backends.triton.int8_linear_dynamic_outlier import int8_linear_dynamic_outlier
from qcompiler.backends.triton.int8_linear_int_mm import (GEMM_AUTO, GEMM_INT_MM, GEMM_TRITON,
                                                          int_mm_supported, uses_int_mm)

REF = torch.ops.qcompiler
# M > 16 and K, N multiples of 8 (what _int_mm takes); N not a multiple of the epilogue tiles.
SHAPES = [(17, 64, 24), (40, 256, 200)]


def _check(y, ref, outlier_mag, dtype):
    assert y.shape == ref.shape and y.dtype == ref.dtype
    tol = 2 * eps(dtype) * ref.float().abs() + eps(dtype) * outlier_mag + 1e-6
    err = (y.float() - ref.float()).abs()
    assert (err <= tol).all(), f"max err {err.max().item()}, worst excess {(err - tol).max().item()}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n_out", [0, 3])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_int_mm_path_matches_reference_and_triton_gemm(m, k, n, n_out, dtype):
    x, idx = make_x(m, k, n_out, dtype, seed=m + n + n_out)
    _, wq, ws, wo, bias = make_static_weights(n, k, idx, dtype, seed=n_out)
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    has = n_out > 0
    args = (xq, xs, wq, ws, xo if has else None, wo if has else None, bias, dtype)
    assert uses_int_mm(GEMM_INT_MM, xq.reshape(-1, k), wq)
    y = int8_linear(*args, gemm=GEMM_INT_MM)
    mag = (xo.float().abs() @ wo.float().abs().t()) if has else 0.0
    _check(y, REF.int8_linear(*args), mag, dtype)
    y_triton = int8_linear(*args, gemm=GEMM_TRITON)
    assert ((y.float() - y_triton.float()).abs() <= eps(dtype) * y_triton.float().abs() + 1e-6).all()


def test_int_mm_path_dynamic_outliers_matches_reference():
    # The gather epilogue (columns of the 16-bit X and of the int8 W found per forward).
    dtype, m, k, n = torch.float16, 33, 128, 48
    x, idx = make_x(m, k, 2, dtype, seed=5)
    _, wq, ws, _, bias = make_static_weights(n, k, idx[:0], dtype, seed=6)
    xq, xs, mask = REF.quantize_rowwise_dynamic(x, 6.0)
    saved = int_mm_mod.INT_MM_MIN_M
    try:
        int_mm_mod.INT_MM_MIN_M = 1  # AUTO takes _int_mm from the first row on
        y = int8_linear_dynamic_outlier(xq, xs, x, mask, wq, ws, bias)
    finally:
        int_mm_mod.INT_MM_MIN_M = saved
    ref = REF.int8_linear_dynamic_outlier(xq, xs, x, mask, wq, ws, bias)
    mag = x[:, idx].float().abs() @ (wq[:, idx].float().abs() * ws.reshape(-1, 1) / 127).t()
    _check(y, ref, 2 * mag, dtype)


@pytest.mark.parametrize("m,k,n,ok", [(16, 64, 64, False), (17, 60, 64, False), (17, 64, 60, False),
                                      (17, 64, 64, True)])
def test_int_mm_supported_follows_int_mm_limits(m, k, n, ok):
    xq = torch.zeros(m, k, dtype=torch.int8, device=DEVICE)
    wq = torch.zeros(n, k, dtype=torch.int8, device=DEVICE)
    assert int_mm_supported(xq, wq) is ok
    # A shape _int_mm refuses silently takes the Triton GEMM, even when forced.
    y = int8_linear(xq, torch.ones(m, 1, device=DEVICE), wq, torch.ones(n, device=DEVICE), None, None, None,
                    torch.float16, gemm=GEMM_INT_MM)
    assert y.shape == (m, n) and (y == 0).all()


def test_auto_keeps_triton_gemm_below_threshold():
    xq = torch.zeros(32, 64, dtype=torch.int8, device=DEVICE)
    wq = torch.zeros(64, 64, dtype=torch.int8, device=DEVICE)
    saved = int_mm_mod.INT_MM_MIN_M
    try:
        int_mm_mod.INT_MM_MIN_M = 64
        assert not uses_int_mm(GEMM_AUTO, xq, wq)
        assert not uses_int_mm(GEMM_TRITON, xq, wq)
    finally:
        int_mm_mod.INT_MM_MIN_M = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
def test_int_mm_path_is_cuda_graph_safe():
    dtype, m, k, n = torch.float16, 256, 512, 384
    x, idx = make_x(m, k, 4, dtype, seed=9)
    _, wq, ws, wo, bias = make_static_weights(n, k, idx, dtype, seed=10)
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    run = lambda: int8_linear(xq, xs, wq, ws, xo, wo, bias, dtype, gemm=GEMM_INT_MM)  # noqa: E731
    eager = run()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = run()
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
