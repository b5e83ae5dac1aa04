"""The small-M (decode) path: 16-bit X times int8 W dequantized in registers, and the
M-dispatched whole-linear ops built on it.

Tolerances:
* against float64 on the *same* dequantized weights: only float rounding - 2 eps |ref| for the
  16-bit output, plus 2**-22 * K * (|x| @ |w|.T) for float32 accumulation over K;
* against the float model ``x @ W.T + b``: W's quantization error, at most half a step
  (``w_scale / 254``) per weight element, so ``(|x| @ 1) * w_scale / 254`` + the rounding above.
"""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE, eps, make_static_weights, make_x

from qcompiler.backends.triton.outlier_linear import (int8_dynamic_outlier_linear,
                                                      int8_outlier_linear)
from qcompiler.backends.triton.quantize_rowwise import outlier_mask_from_idx
from qcompiler.backends.triton.weight_only_linear import SMALL_M, weight_only_linear
from qcompiler.ops import quantize_weight

REF = torch.ops.qcompiler
DTYPES = [torch.float16, torch.bfloat16]
SHAPES = [(1, 4095, 64), (3, 256, 11008), (16, 1000, 333)]


def _deq(wq, ws):
    return wq.double() * (ws.double().reshape(-1, 1) / 127.0)


def _assert_within(y, ref, tol):
    err = (y.double() - ref).abs()
    assert torch.isfinite(y).all()
    assert (err <= tol).all(), f"max err {err.max().item()}, worst excess {(err - tol).max().item()}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_out", [0, 1, 64])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_weight_only_linear(m, k, n, n_out, dtype):
    x, idx = make_x(m, k, n_out, dtype, seed=m + k + n + n_out)
    w, wq, ws, wo, bias = make_static_weights(n, k, idx, dtype, seed=n_out)
    y = weight_only_linear(x, wq, ws, idx if n_out else None, wo if n_out else None, bias)
    assert y.shape == (m, n) and y.dtype == dtype
    xd = x.double()
    w_eff = _deq(wq, ws)
    w_eff[:, idx] = wo.double()
    ref = xd @ w_eff.t() + bias.double()
    rounding = 2 * eps(dtype) * ref.abs() + 2.0 ** -22 * k * (xd.abs() @ w_eff.abs().t())
    _assert_within(y, ref, rounding)
    # Against the float model: half a weight quantization step per element (+ W_out's rounding).
    true = xd @ w.double().t() + bias.double()
    step = (xd.abs().sum(1, keepdim=True) * ws.double().reshape(1, -1) / 254.0)
    wo_round = eps(dtype) * (xd[:, idx].abs() @ w[:, idx].double().abs().t())
    _assert_within(y, true, rounding + step + wo_round)


def test_weight_only_linear_rejects_large_m():
    x, idx = make_x(SMALL_M + 1, 64, 0, torch.float16, seed=1)
    _, wq, ws, _, _ = make_static_weights(32, 64, idx, torch.float16, seed=1)
    with pytest.raises(ValueError, match="at most"):
        weight_only_linear(x, wq, ws, None, None, None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, SMALL_M, SMALL_M + 1, 40])
def test_int8_outlier_linear_dispatch(m, dtype):
    # Both sides of the M <= 16 switch compute the same layer: within the quantization-step bound
    # of the path taken (weight only: W steps; int8 x int8: X and W steps) of the float model.
    k, n, n_out = 600, 200, 4
    x, idx = make_x(m, k, n_out, dtype, seed=m)
    w, wq, ws, wo, bias = make_static_weights(n, k, idx, dtype, seed=m)
    mask = outlier_mask_from_idx(idx, k)
    y = int8_outlier_linear(x, wq, ws, idx, mask, wo, bias)
    xd = x.double()
    true = xd @ w.double().t() + bias.double()
    w_step = xd.abs().sum(1, keepdim=True) * ws.double().reshape(1, -1) / 254.0
    tol = 2 * eps(dtype) * true.abs() + eps(dtype) * (xd[:, idx].abs() @ w[:, idx].double().abs().t())
    if m > SMALL_M:
        _, xs, _ = REF.quantize_rowwise(x, idx)
        xs = xs.double()
        wq_abs = _deq(wq, ws).abs()
        x_step = xs / 254.0 * wq_abs.sum(1).reshape(1, -1)  # |dx| <= xs/254 on every element
        tol = tol + w_step + x_step + k * xs * ws.double().reshape(1, -1) / 254.0 ** 2
        ref = REF.int8_linear(*REF.quantize_rowwise(x, idx)[:2], wq, ws,
                              REF.quantize_rowwise(x, idx)[2], wo, bias, dtype)
        _assert_within(y, ref.double(), 2 * eps(dtype) * ref.double().abs()
                       + eps(dtype) * (xd[:, idx].abs() @ wo.double().abs().t()))
    else:
        tol = tol + w_step
    _assert_within(y, true, tol)


@pytest.mark.parametrize("m", [3, 48])
def test_int8_dynamic_outlier_linear_dispatch(m):
    dtype = torch.float16
    k, n = 700, 90
    x, _ = make_x(m, k, 5, dtype, seed=m + 100)
    g = torch.Generator().manual_seed(m)
    w = (torch.randn(n, k, generator=g) * 0.05).to(DEVICE)
    wq, ws = quantize_weight(w)
    y = int8_dynamic_outlier_linear(x, wq, ws, 6.0, None)
    assert y.shape == (m, n) and y.dtype == dtype
    if m > SMALL_M:
        xq, xs, mask = REF.quantize_rowwise_dynamic(x, 6.0)
        ref = REF.int8_linear_dynamic_outlier(xq, xs, x, mask, wq, ws, None).double()
        cols = mask.nonzero().squeeze(1)
        mag = x[:, cols].double().abs() @ _deq(wq, ws)[:, cols].abs().t()
        _assert_within(y, ref, 2 * eps(dtype) * ref.abs() + 2 * eps(dtype) * mag)
    else:
        ref = x.double() @ _deq(wq, ws).t()
        _assert_within(y, ref, 2 * eps(dtype) * ref.abs()
                       + 2.0 ** -22 * k * (x.double().abs() @ _deq(wq, ws).abs().t()))
