"""The reference ops against a float64 computation of the same formulas."""

import pytest
import torch

import qcompiler  # noqa: F401 - registers the ops
from qcompiler.ops import int8_matmul, quantize_weight

ops = torch.ops.qcompiler


def _x(rows=7, k=33, outliers=(2, 9), scale=20.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    x[:, list(outliers)] *= scale
    return x.to(dtype)


def test_int8_matmul_is_exact():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-127, 128, (5, 301), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (9, 301), dtype=torch.int8, generator=g)
    assert torch.equal(int8_matmul(a, b), (a.long() @ b.long().t()).int())


@pytest.mark.parametrize("idx", [(), (2,), (2, 9), tuple(range(33))])
def test_quantize_rowwise(idx):
    x = _x()
    t = torch.tensor(idx, dtype=torch.long)
    xq, scale, xo = ops.quantize_rowwise(x, t)
    assert xq.dtype == torch.int8 and scale.shape == (7, 1) and xo.shape == (7, len(idx))
    assert torch.equal(xo, x[:, list(idx)])
    rest = x.clone()
    rest[:, list(idx)] = 0
    if len(idx) < x.shape[1]:
        torch.testing.assert_close(scale, rest.abs().amax(1, keepdim=True))
    if idx:
        assert (xq[:, list(idx)] == 0).all()
    # Round-to-nearest: every value is within half a quantization step of its dequantization.
    step = scale / 127
    assert ((xq.float() * step - rest).abs() <= step / 2 + 1e-6).all()


def test_quantize_rowwise_zero_row_and_3d():
    x = _x(rows=6).reshape(2, 3, 33)
    x[1, 2] = 0
    xq, scale, _ = ops.quantize_rowwise(x, torch.empty(0, dtype=torch.long))
    assert xq.shape == x.shape and scale.shape == (2, 3, 1)
    assert (xq[1, 2] == 0).all() and torch.isfinite(scale).all() and (scale > 0).all()


def test_quantize_rowwise_dynamic_finds_the_columns():
    x = _x(outliers=(4, 30))
    xq, scale, mask = ops.quantize_rowwise_dynamic(x, 6.0)
    assert mask.nonzero().flatten().tolist() == [4, 30]
    ref, ref_scale, _ = ops.quantize_rowwise(x, torch.tensor([4, 30]))
    assert torch.equal(xq, ref) and torch.equal(scale, ref_scale)


def test_quantize_tensorwise():
    x = _x()
    xq, scale = ops.quantize_tensorwise(x)
    assert scale.shape == (1,) and scale.item() == pytest.approx(x.abs().max().item())
    assert xq.abs().max() == 127


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("idx", [(), (2, 9)])
def test_int8_linear_matches_float64_formula(dtype, idx):
    x = _x(dtype=dtype)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(12, 33, generator=g).to(dtype)
    b = torch.randn(12, generator=g).to(dtype)
    t = torch.tensor(idx, dtype=torch.long)
    xq, xs, xo = ops.quantize_rowwise(x, t)
    wq, ws = quantize_weight(w.index_fill(1, t, 0))
    y = ops.int8_linear(xq, xs, wq, ws, xo if idx else None, w[:, list(idx)] if idx else None, b, dtype)
    assert y.dtype == dtype and y.shape == (7, 12)
    ref = (xq.double() @ wq.double().t()) * (xs.double() * ws.double()[None]) / 127 ** 2 + b.double()
    if idx:
        ref += xo.double() @ w[:, list(idx)].double().t()
    # The only error left is the final rounding to dtype (plus dtype matmul rounding of the outlier part).
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_dynamic_outlier_linear_close_to_float():
    x = _x(rows=16, k=64, outliers=(5, 40))
    w = torch.randn(24, 64)
    wq, ws = quantize_weight(w)
    xq, xs, mask = ops.quantize_rowwise_dynamic(x, 6.0)
    y = ops.int8_linear_dynamic_outlier(xq, xs, x, mask, wq, ws, None)
    ref = x.double() @ w.double().t()
    assert ((y.double() - ref).norm() / ref.norm()).item() < 0.015


@pytest.mark.parametrize("case", ["rowwise", "linear", "dynamic", "tensorwise"])
def test_opcheck(case):
    """Fake impls agree with the real ones and the ops behave under export/compile tracing."""
    x = _x()
    t = torch.tensor([2, 9])
    if case == "rowwise":
        torch.library.opcheck(ops.quantize_rowwise.default, (x, t))
    elif case == "dynamic":
        torch.library.opcheck(ops.quantize_rowwise_dynamic.default, (x, 6.0))
    elif case == "tensorwise":
        torch.library.opcheck(ops.quantize_tensorwise.default, (x,))
    else:
        xq, xs, xo = ops.quantize_rowwise(x, t)
        wq, ws = quantize_weight(torch.randn(12, 33))
        torch.library.opcheck(ops.int8_linear.default, (xq, xs, wq, ws, xo, torch.randn(12, 2), None, torch.float32))
