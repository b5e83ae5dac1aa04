"""The one-row GEMV (``weight_only_gemv_row``): every format whose groups fit its tiles, against
float64 on the same decoded weights and against the float model in quantization steps; the
signed-int8 form int8-outlier uses, with its fp16 outlier columns, against the reference op.

K = 301 (odd: the last packed byte holds one code, the last group is short), N = 40 (not a
multiple of BLOCK_N). Under the interpreter the tiles are BLOCK_KB = 64 bytes.
"""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE
from weight_only_problems import FORMATS, dequant_ref, make_problem, make_x16, rounding_tol, within

from qcompiler.backends.triton._weight_operand import int8_signed_operand
from qcompiler.backends.triton.weight_only_gemv_row import row_supported, weight_only_gemv_row

DTYPES = [torch.float16, torch.bfloat16]
K, N = 301, 40
ROW_FORMATS = ["w4-g128", "w8-channel", "w8-g64-asym", "nf4-b64", "nf4-b64-dq"]


def _check(y, x, p, dtype):
    ref = dequant_ref(p, x)
    tol = rounding_tol(x, p, ref, dtype)
    within(y, ref, tol)
    # Against the float model: each weight is off by at most its step bound.
    true = x.double().reshape(-1, x.shape[-1]) @ p.w.double().t()
    if p.bias is not None:
        true = true + p.bias.double()
    within(y, true, tol + x.double().abs().reshape(-1, x.shape[-1]) @ p.step.t())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", ROW_FORMATS, ids=str)
def test_row_matches_reference(fmt, dtype):
    p = make_problem(FORMATS[fmt], N, K, dtype, seed=11)
    op = p.operand()
    assert row_supported(op)
    x = make_x16(1, K, dtype, seed=12)
    y = weight_only_gemv_row(x, op, p.bias)
    assert y.shape == (1, N) and y.dtype == dtype
    _check(y, x, p, dtype)


@pytest.mark.parametrize("config", [
    dict(BLOCK_N=16, BLOCK_KB=64, SPLIT_K=1),    # no split: direct store
    dict(BLOCK_N=32, BLOCK_KB=64, SPLIT_K=3),    # 3 splits over 3 tiles
    dict(BLOCK_N=64, BLOCK_KB=128, SPLIT_K=4),   # 2 groups per tile, more splits than tiles
    dict(BLOCK_N=2, BLOCK_KB=256, SPLIT_K=1),    # narrow tile, whole K in one program, no split
], ids=lambda c: "n{BLOCK_N}kb{BLOCK_KB}s{SPLIT_K}".format(**c))
@pytest.mark.parametrize("fmt", ["w4-g128", "w8-g64-asym", "nf4-b64-dq"], ids=str)
def test_row_configs(fmt, config):
    # Tiles holding one or several groups, split or not, compute the same layer.
    dtype = torch.float16
    p = make_problem(FORMATS[fmt], N, K, dtype, seed=3)
    x = make_x16(1, K, dtype, seed=4)
    _check(weight_only_gemv_row(x, p.operand(), p.bias, config=config), x, p, dtype)


def test_row_rejects_split_groups_and_bad_rows():
    p = make_problem(FORMATS["w4-g48-asym"], N, K, torch.float16, seed=0)
    op = p.operand()
    assert not row_supported(op)  # 48 divides no tile: weight_only_gemv serves it
    with pytest.raises(ValueError, match="whole groups"):
        weight_only_gemv_row(make_x16(1, K, torch.float16, seed=0), op, None,
                             config=dict(BLOCK_N=16, BLOCK_KB=64, SPLIT_K=1))
    with pytest.raises(ValueError, match="one row"):
        weight_only_gemv_row(make_x16(2, K, torch.float16, seed=0), op, None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_out", [0, 3, 20], ids=lambda n: f"out{n}")
def test_row_signed_int8_with_outliers(n_out, dtype):
    # int8-outlier's weight: wq int8 (outlier columns zero), w_scale / 127 per row, fp16 columns
    # w_out added in the epilogue; against the reference int8 op on the same X (not quantized).
    g = torch.Generator().manual_seed(n_out)
    wq = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    ws = torch.rand(N, generator=g) * 0.05 + 0.01
    idx = torch.randperm(K, generator=g)[:n_out].sort().values
    wq[:, idx] = 0
    wo = (torch.randn(N, n_out, generator=g) * 0.05).to(dtype)
    b = (torch.randn(N, generator=g) * 0.1).to(dtype)
    x = make_x16(1, K, dtype, seed=n_out + 1)
    wq, ws, idx, wo, b = (t.to(DEVICE) for t in (wq, ws, idx, wo, b))
    y = weight_only_gemv_row(x, int8_signed_operand(wq, ws, x.device), b,
                             idx if n_out else None, wo if n_out else None)
    w = wq.double() * (ws.double() / 127.0)[:, None]
    w[:, idx] = wo.double()
    ref = x.double() @ w.t() + b.double()
    eps = torch.finfo(dtype).eps
    # float32 sums over K plus the 16-bit output rounding (and the outlier weights' 16-bit values).
    tol = eps * ref.abs() + (eps + 2.0 ** -22 * K) * (x.double().abs() @ w.abs().t())
    within(y, ref, tol)
