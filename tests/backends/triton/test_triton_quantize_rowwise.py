"""Triton quantize_rowwise / quantize_rowwise_dynamic against the reference ops.

Tolerance: none. The kernels do the reference's float32 arithmetic (absmax, 127 * (1/scale),
round half to even, clamp) element by element, so X int8, the scales, the gathered outlier columns
and the dynamic mask must be bit-identical (0 quantization steps).
"""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE, make_x

from qcompiler.backends.triton.quantize_rowwise import quantize_rowwise, quantize_rows_into
from qcompiler.backends.triton.quantize_rowwise_dynamic import (quantize_rowwise_dynamic,
                                                                quantize_rowwise_dynamic_indexed)

REF = torch.ops.qcompiler
DTYPES = [torch.float16, torch.bfloat16]
# Odd K (one-pass tile with a masked tail), K = one full tile, M past a tile of rows, tiny K.
SHAPES = [(1, 4095), (3, 4096), (17, 1000), (128, 257)]


def _assert_same(got, ref):
    for i, (g, r) in enumerate(zip(got, ref)):
        assert g.shape == r.shape and g.dtype == r.dtype, (i, g.shape, r.shape, g.dtype, r.dtype)
        assert torch.equal(g, r), f"output {i}: {(g.float() - r.float()).abs().max().item()} max diff"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_out", [0, 1, 64])
@pytest.mark.parametrize("m,k", SHAPES)
def test_quantize_rowwise_matches_reference(m, k, n_out, dtype):
    x, idx = make_x(m, k, n_out, dtype, seed=m * 7 + k + n_out)
    _assert_same(quantize_rowwise(x, idx), REF.quantize_rowwise(x, idx))


def test_quantize_rowwise_long_rows_two_passes():
    # K = 20000 > the 16384-element tile: absmax pass, then a second (L2) pass to quantize.
    x, idx = make_x(5, 20000, 64, torch.float16, seed=3)
    _assert_same(quantize_rowwise(x, idx), REF.quantize_rowwise(x, idx))


def test_quantize_rowwise_leading_dims_and_given_mask():
    x, idx = make_x(2 * 9, 300, 5, torch.bfloat16, seed=4)
    x = x.reshape(2, 9, 300)
    mask = torch.zeros(300, dtype=torch.bool, device=DEVICE)
    mask[idx] = True
    got = quantize_rowwise(x, idx, mask)
    assert got[0].shape == (2, 9, 300) and got[1].shape == (2, 9, 1) and got[2].shape == (2, 9, 5)
    _assert_same(got, REF.quantize_rowwise(x, idx))


def test_quantize_rowwise_all_columns_outliers():
    # Nothing left to quantize: every row scale is the 1e-12 floor and X int8 is all zeros.
    x, idx = make_x(4, 64, 64, torch.float16, seed=5)
    got = quantize_rowwise(x, idx)
    _assert_same(got, REF.quantize_rowwise(x, idx))
    assert not got[0].any()


def test_quantize_rowwise_zero_rows_and_ties():
    # A zero row must get the floor scale; values on exact .5 steps must round half to even.
    x = torch.zeros(3, 254, dtype=torch.float16, device=DEVICE)
    x[1] = torch.arange(-127, 127, device=DEVICE).half() * 0.5  # absmax 63.5 -> q = 2 * x exact
    x[2, :4] = torch.tensor([127.0, 0.5, 1.5, -2.5], device=DEVICE).half()  # q = x: ties .5
    _assert_same(quantize_rowwise(x, torch.zeros(0, dtype=torch.long, device=DEVICE)),
                 REF.quantize_rowwise(x, torch.zeros(0, dtype=torch.long, device=DEVICE)))


def test_quantize_rowwise_writes_every_element():
    # Outputs poisoned first: any element the kernel skips shows up.
    x, idx = make_x(17, 1000, 3, torch.float16, seed=6)
    mask = torch.zeros(1000, dtype=torch.int8, device=DEVICE)
    mask[idx] = 1
    xq = torch.full((17, 1000), 99, dtype=torch.int8, device=DEVICE)
    scale = torch.full((17, 1), float("nan"), device=DEVICE)
    xo = torch.full((17, 3), float("nan"), dtype=torch.float16, device=DEVICE)
    quantize_rows_into(x, mask, idx, xq, scale, xo)
    _assert_same((xq, scale, xo), REF.quantize_rowwise(x, idx))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_out", [0, 1, 64])
@pytest.mark.parametrize("m,k", SHAPES)
def test_quantize_rowwise_dynamic_matches_reference(m, k, n_out, dtype):
    # Outlier columns x20: with N(0,1) data and threshold 6, exactly those columns are flagged
    # (almost surely); threshold 2.5 also catches ordinary columns in taller X.
    x, idx = make_x(m, k, n_out, dtype, seed=m + k * 3 + n_out)
    for threshold in (6.0, 2.5):
        got = quantize_rowwise_dynamic(x, threshold)
        _assert_same(got, REF.quantize_rowwise_dynamic(x, threshold))


def test_quantize_rowwise_dynamic_index_list():
    # The compacted list read by the dynamic matmul: ascending outlier columns, count on device.
    x, idx = make_x(33, 3000, 40, torch.float16, seed=8)
    _, _, mask, cols, cnt = quantize_rowwise_dynamic_indexed(x, 6.0)
    n = int(cnt.item())
    assert torch.equal(cols[:n].long(), mask.nonzero().squeeze(1))
    assert n == int(mask.sum())
    assert torch.equal(mask.nonzero().squeeze(1), idx)
