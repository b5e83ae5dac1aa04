"""The int8 GEMM engines (``torch._int_mm`` + the Triton epilogue kernel; the TMA kernel) against
the reference op and against the pointer-load Triton GEMM (same int32 accumulator, same epilogue).

Tolerance vs the reference as in ``test_triton_int8_linear.py``: the int32 product is exact on
both sides, what remains is each side's rounding to 16 bits and the outlier product kept in
float32 by the kernel (rounded to 16 bits by the reference). Against the Triton GEMM: equal up to
the outlier ``tl.dot``'s last-bit rounding (1 ulp of the 16-bit output).
``torch._int_mm`` runs on the CPU too, and the interpreter reads TMA descriptors, so these tests
run in CI.
"""

from __future__ import annotations

import pytest
import torch
import triton
from triton_problems import DEVICE, eps, make_static_weights, make_x, replay_in_cuda_graph

from qcompiler.backends.triton import int8_gemm_engine as engine_mod
from qcompiler.backends.triton.int8_gemm_engine import (GEMM_AUTO, GEMM_INT_MM, GEMM_TMA, GEMM_TRITON,
                                                        pick_gemm)
from qcompiler.backends.triton.int8_linear import int8_linear
from qcompiler.backends.triton.int8_linear_dynamic_outlier import int8_linear_dynamic_outlier
from qcompiler.backends.triton.int8_linear_int_mm import int_mm_supported
from qcompiler.backends.triton import int8_linear_tma as tma_module
from qcompiler.backends.triton._config import interpreting
from qcompiler.backends.triton.int8_linear_tma import tma_supported

REF = torch.ops.qcompiler
ENGINES = [GEMM_INT_MM, GEMM_TMA]
# M > 16 and K, N multiples of 16 (what _int_mm and TMA take); N, M not multiples of the tiles.
SHAPES = [(17, 64, 24), (40, 256, 200)]


def _check(y, ref, outlier_mag, dtype):
    assert y.shape == ref.shape and y.dtype == ref.dtype
    tol = 2 * eps(dtype) * ref.float().abs() + eps(dtype) * outlier_mag + 1e-6
    err = (y.float() - ref.float()).abs()
    assert (err <= tol).all(), f"max err {err.max().item()}, worst excess {(err - tol).max().item()}"


def _requires(engine, xq, wq):
    if engine != GEMM_TMA:
        return
    if tma_module.TensorDescriptor is None:
        pytest.skip(f"triton {triton.__version__} has no triton.tools.tensor_descriptor: no TMA kernel")
    if not interpreting() and not (xq.is_cuda and torch.cuda.get_device_capability(xq.device) >= (9, 0)):
        pytest.skip("TMA needs compute capability >= 9.0 (or the CPU interpreter)")
    # The test shapes are TMA-aligned: a refusal here is a bug, not a reason to skip.
    assert tma_supported(xq, wq), f"tma_supported refused {tuple(xq.shape)} x {tuple(wq.shape)}"


@pytest.mark.parametrize("engine", ENGINES, ids=["int_mm", "tma"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n_out", [0, 3])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_engine_matches_reference_and_triton_gemm(m, k, n, n_out, dtype, engine):
    x, idx = make_x(m, k, n_out, dtype, seed=m + n + n_out)
    _, wq, ws, wo, bias = make_static_weights(n, k, idx, dtype, seed=n_out)
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    _requires(engine, xq.reshape(-1, k), wq)
    assert pick_gemm(engine, xq.reshape(-1, k), wq) == engine
    has = n_out > 0
    args = (xq, xs, wq, ws, xo if has else None, wo if has else None, bias, dtype)
    y = int8_linear(*args, gemm=engine)
    mag = (xo.float().abs() @ wo.float().abs().t()) if has else 0.0
    _check(y, REF.int8_linear(*args), mag, dtype)
    y_triton = int8_linear(*args, gemm=GEMM_TRITON)
    assert ((y.float() - y_triton.float()).abs() <= eps(dtype) * y_triton.float().abs() + 1e-6).all()


@pytest.mark.parametrize("engine", ENGINES, ids=["int_mm", "tma"])
def test_engine_dynamic_outliers_matches_reference(engine, monkeypatch):
    # The gather epilogue (columns of the 16-bit X and of the int8 W found per forward), via AUTO.
    dtype, m, k, n = torch.float16, 33, 128, 48
    x, idx = make_x(m, k, 2, dtype, seed=5)
    _, wq, ws, _, bias = make_static_weights(n, k, idx[:0], dtype, seed=6)
    xq, xs, mask = REF.quantize_rowwise_dynamic(x, 6.0)
    _requires(engine, xq, wq)
    monkeypatch.setattr(engine_mod, "INT_MM_MIN_M" if engine == GEMM_INT_MM else "TMA_MIN_M", 1)
    monkeypatch.setattr(engine_mod, "TMA_MIN_M" if engine == GEMM_INT_MM else "INT_MM_MIN_M", None)
    monkeypatch.setattr(engine_mod, "TMA_MIN_N", 1)
    assert pick_gemm(GEMM_AUTO, xq, wq) == engine
    y = int8_linear_dynamic_outlier(xq, xs, x, mask, wq, ws, bias)
    ref = REF.int8_linear_dynamic_outlier(xq, xs, x, mask, wq, ws, bias)
    mag = x[:, idx].float().abs() @ (wq[:, idx].float().abs() * ws.reshape(-1, 1) / 127).t()
    _check(y, ref, 2 * mag, dtype)


@pytest.mark.parametrize("m,k,n,ok", [(16, 64, 64, False), (17, 60, 64, False), (17, 64, 60, False),
                                      (17, 64, 64, True)])
def test_int_mm_limits_fall_back_to_triton(m, k, n, ok):
    xq = torch.zeros(m, k, dtype=torch.int8, device=DEVICE)
    wq = torch.zeros(n, k, dtype=torch.int8, device=DEVICE)
    assert int_mm_supported(xq, wq) is ok
    assert pick_gemm(GEMM_INT_MM, xq, wq) == (GEMM_INT_MM if ok else GEMM_TRITON)
    # A shape _int_mm refuses takes the Triton GEMM, even when forced.
    y = int8_linear(xq, torch.ones(m, 1, device=DEVICE), wq, torch.ones(n, device=DEVICE), None, None, None,
                    torch.float16, gemm=GEMM_INT_MM)
    assert y.shape == (m, n) and (y == 0).all()


def test_tma_needs_16_byte_rows():
    xq = torch.zeros(32, 40, dtype=torch.int8, device=DEVICE)
    wq = torch.zeros(32, 40, dtype=torch.int8, device=DEVICE)
    assert not tma_supported(xq, wq)
    assert pick_gemm(GEMM_TMA, xq, wq) == GEMM_TRITON


def test_auto_follows_thresholds(monkeypatch):
    xq = torch.zeros(32, 64, dtype=torch.int8, device=DEVICE)
    wq = torch.zeros(64, 64, dtype=torch.int8, device=DEVICE)
    if tma_supported(xq, wq):
        monkeypatch.setattr(engine_mod, "TMA_MIN_M", 32)
        monkeypatch.setattr(engine_mod, "TMA_MIN_N", 128)  # N = 64 is below it: not TMA
        assert pick_gemm(GEMM_AUTO, xq, wq) == GEMM_TRITON
        monkeypatch.setattr(engine_mod, "TMA_MIN_N", 64)
        assert pick_gemm(GEMM_AUTO, xq, wq) == GEMM_TMA
    monkeypatch.setattr(engine_mod, "TMA_MIN_M", None)
    monkeypatch.setattr(engine_mod, "INT_MM_MIN_M", 64)
    assert pick_gemm(GEMM_AUTO, xq, wq) == GEMM_TRITON
    monkeypatch.setattr(engine_mod, "INT_MM_MIN_M", 32)
    assert pick_gemm(GEMM_AUTO, xq, wq) == GEMM_INT_MM
    assert pick_gemm(GEMM_TRITON, xq, wq) == GEMM_TRITON


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
@pytest.mark.parametrize("engine", ENGINES, ids=["int_mm", "tma"])
def test_engine_is_cuda_graph_safe(engine):
    dtype, m, k, n = torch.float16, 256, 512, 384
    x, idx = make_x(m, k, 4, dtype, seed=9)
    _, wq, ws, wo, bias = make_static_weights(n, k, idx, dtype, seed=10)
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    _requires(engine, xq, wq)
    run = lambda: int8_linear(xq, xs, wq, ws, xo, wo, bias, dtype, gemm=engine)  # noqa: E731
    eager = run()  # tunes outside the capture
    assert torch.equal(replay_in_cuda_graph(run), eager)
