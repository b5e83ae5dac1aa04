"""Triton int8_linear / int8_linear_dynamic_outlier against the reference ops.

Tolerance, per output element: the int32 accumulation is exact on both sides, so 0 quantization
steps of error are allowed; what remains is float rounding:
  2 * eps * |ref|            - each side rounds once to the 16-bit output (the CPU interpreter
                               truncates to bf16, so up to 1 ulp instead of 1/2);
  eps * (|xo| @ |wo|.T)      - the reference rounds the outlier product to 16 bits before adding
                               it, the kernel keeps it in float32;
  + eps * (|xo| @ |wo|.T)    - dynamic mode only: both sides round the dequantized int8 weight
                               columns to 16 bits (the interpreter by truncation: up to 1 ulp).
"""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE, eps, make_static_weights, make_x

from qcompiler.backends.triton.int8_linear import (OUTLIERS_DENSE, int8_linear,
                                                   launch_int8_linear)
from qcompiler.backends.triton.int8_linear_dynamic_outlier import int8_linear_dynamic_outlier
from qcompiler.ops import quantize_weight

REF = torch.ops.qcompiler
DTYPES = [torch.float16, torch.bfloat16]
# K, N not multiples of the tiles; N = 11008 (Llama MLP) with few rows to stay fast in CI.
SHAPES = [(1, 4095, 64), (3, 256, 11008), (17, 1000, 333), (128, 512, 256)]


def _check(y, ref, outlier_mag, dtype, outlier_ulps=1.0):
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert torch.isfinite(y).all()
    tol = 2 * eps(dtype) * ref.float().abs() + outlier_ulps * eps(dtype) * outlier_mag + 1e-6
    err = (y.float() - ref.float()).abs()
    assert (err <= tol).all(), f"max err {err.max().item()}, worst excess {(err - tol).max().item()}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_out", [0, 1, 64])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_int8_linear_matches_reference(m, k, n, n_out, dtype):
    x, idx = make_x(m, k, n_out, dtype, seed=m + k + n + n_out)
    _, wq, ws, wo, bias = make_static_weights(n, k, idx, dtype, seed=n_out)
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    has = n_out > 0
    args = (xq, xs, wq, ws, xo if has else None, wo if has else None, bias, dtype)
    ref = REF.int8_linear(*args)
    mag = (xo.float().abs() @ wo.float().abs().t()) if has else 0.0
    _check(int8_linear(*args), ref, mag, dtype)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_int8_linear_tensorwise_scales_no_bias(out_dtype):
    # The int8-absmax scheme: one scale for X ([1]) and one for W ([1]), no outliers, no bias.
    x, _ = make_x(37, 300, 0, torch.float16, seed=11)
    xq, xs = REF.quantize_tensorwise(x)
    g = torch.Generator().manual_seed(12)
    wq, ws = quantize_weight(torch.randn(70, 300, generator=g).to(DEVICE), per_channel=False)
    args = (xq, xs, wq, ws, None, None, None, out_dtype)
    _check(int8_linear(*args), REF.int8_linear(*args), 0.0,
           out_dtype if out_dtype != torch.float32 else torch.bfloat16)


def test_int8_linear_leading_dims():
    x, idx = make_x(2 * 5, 200, 3, torch.float16, seed=13)
    x = x.reshape(2, 5, 200)
    _, wq, ws, wo, bias = make_static_weights(48, 200, idx, torch.float16, seed=13)
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    args = (xq, xs, wq, ws, xo, wo, bias, torch.float16)
    y = int8_linear(*args)
    assert y.shape == (2, 5, 48)
    mag = xo.float().abs().reshape(10, 3) @ wo.float().abs().t()
    _check(y, REF.int8_linear(*args), mag.reshape(2, 5, 48), torch.float16)


def test_int8_linear_writes_every_element():
    x, idx = make_x(70, 300, 5, torch.bfloat16, seed=14)
    _, wq, ws, wo, bias = make_static_weights(130, 300, idx, torch.bfloat16, seed=14)
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    y = torch.full((70, 130), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    launch_int8_linear(xq, xs.reshape(-1), wq, ws, xo, wo, None, None, bias, y, OUTLIERS_DENSE)
    mag = xo.float().abs() @ wo.float().abs().t()
    _check(y, REF.int8_linear(xq, xs, wq, ws, xo, wo, bias, torch.bfloat16), mag, torch.bfloat16)


def test_int8_linear_float32_out_is_bit_exact():
    # Full-range int8 operands, float32 out, no outliers: the exact int32 sum times the scales in
    # the reference's float32 order - nothing left to round differently, so bit-identical.
    g = torch.Generator().manual_seed(15)
    xq = torch.randint(-127, 128, (33, 777), generator=g, dtype=torch.int8).to(DEVICE)
    wq = torch.randint(-127, 128, (65, 777), generator=g, dtype=torch.int8).to(DEVICE)
    xs = (torch.rand(33, 1, generator=g) * 5).to(DEVICE)
    ws = (torch.rand(65, generator=g) * 0.3).to(DEVICE)
    args = (xq, xs, wq, ws, None, None, None, torch.float32)
    assert torch.equal(int8_linear(*args), REF.int8_linear(*args))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_out", [0, 1, 64])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_int8_linear_dynamic_outlier_matches_reference(m, k, n, n_out, dtype):
    x, idx = make_x(m, k, n_out, dtype, seed=3 * m + k + n + n_out)
    g = torch.Generator().manual_seed(n_out)
    wq, ws = quantize_weight((torch.randn(n, k, generator=g) * 0.05).to(DEVICE))
    bias = None if n_out == 1 else (torch.randn(n, generator=g) * 0.1).to(dtype).to(DEVICE)
    xq, xs, mask = REF.quantize_rowwise_dynamic(x, 6.0)
    assert int(mask.sum()) == n_out  # the x20 columns, and only those, pass threshold 6
    ref = REF.int8_linear_dynamic_outlier(xq, xs, x, mask, wq, ws, bias)
    cols = mask.nonzero().squeeze(1)
    w_deq = wq[:, cols].float() * (ws[:, None] / 127.0)
    mag = x[:, cols].float().abs() @ w_deq.abs().t()
    _check(int8_linear_dynamic_outlier(xq, xs, x, mask, wq, ws, bias), ref, mag, dtype,
           outlier_ulps=2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-sized shapes: too slow for the CPU interpreter")
@pytest.mark.parametrize("m,k,n", [(2048, 4096, 4096), (300, 4096, 11008)])
def test_int8_linear_gpu_sizes(m, k, n):
    dtype = torch.float16
    x, idx = make_x(m, k, 8, dtype, seed=21)
    _, wq, ws, wo, bias = make_static_weights(n, k, idx, dtype, seed=21)
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    args = (xq, xs, wq, ws, xo, wo, bias, dtype)
    _check(int8_linear(*args), REF.int8_linear(*args), xo.float().abs() @ wo.float().abs().t(), dtype)
