"""The M-dispatched weight-only ops ``qcompiler_triton.weight_only_uint_linear`` /
``weight_only_nf4_linear``: the GEMV for M <= 16, the M-tiled kernel up to 256 rows, dequantize +
``F.linear`` above, all against the
reference ops (``qcompiler::weight_only_linear`` / ``nf4_linear``, float32 on the same codes), plus
operand checks and the fake implementations (export keeps the kernels as opaque calls)."""

from __future__ import annotations

import pytest
import torch
from weight_only_problems import FORMATS, OPS, dequant_ref, make_problem, make_x16, rounding_tol, within

from qcompiler.backends.triton.weight_only_linear_ops import WEIGHT_ONLY_GEMM_MAX_M, WEIGHT_ONLY_SMALL_M

K, N = 200, 48


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 3, WEIGHT_ONLY_SMALL_M + 1, WEIGHT_ONLY_GEMM_MAX_M + 1])
@pytest.mark.parametrize("fmt", ["w4-g48-asym", "w8-channel", "nf4-b64-dq"], ids=str)
def test_op_matches_reference_op(fmt, m, dtype):
    p = make_problem(FORMATS[fmt], N, K, dtype, seed=m)
    x = make_x16(m, K, dtype, seed=m + 1)
    y, y_ref = p.triton_op(x), p.ref_op(x)
    assert y.shape == y_ref.shape == (m, N) and y.dtype == y_ref.dtype == dtype
    ref = dequant_ref(p, x)
    # Both round the same float64 value once to 16 bits (the reference after float32 sums, the
    # kernels after float32 sums of W in x's dtype; a 16-bit matmul for M > 256): each within it.
    tol = rounding_tol(x, p, ref, dtype)
    within(y, ref, tol)
    within(y_ref, ref, tol)


def test_op_leading_dims_and_no_bias():
    p = make_problem(FORMATS["nf4-b64"], N, K, torch.float16, seed=3, bias=False)
    for rows in (2, 9, 150):  # 4 rows (GEMV), 18 rows (M-tiled kernel), 300 rows (dequantize + matmul)
        x = make_x16(rows, K, torch.float16, seed=rows, lead=(2,))
        y = p.triton_op(x)
        assert y.shape == (2, rows, N)
        within(y, dequant_ref(p, x), rounding_tol(x, p, dequant_ref(p, x), torch.float16))


def test_operand_checks():
    p = make_problem(FORMATS["w4-g128"], N, K, torch.float16, seed=0)
    x = make_x16(1, K, torch.float16, seed=0)
    qw = torch.zeros(N, K // 2, dtype=torch.uint8, device=x.device)
    s = torch.ones(N, 2, device=x.device)
    with pytest.raises(ValueError, match="4- or 8-bit"):
        OPS.weight_only_uint_linear(x, qw, s, None, None, 3, 128)
    with pytest.raises(ValueError, match="scales must be torch.float32"):
        OPS.weight_only_uint_linear(x, qw, s[:, :1], None, None, 4, 128)
    with pytest.raises(ValueError, match="does not hold K=200"):
        OPS.weight_only_uint_linear(x, qw[:, :50], s, None, None, 4, 128)
    with pytest.raises(ValueError, match="come together"):
        OPS.weight_only_nf4_linear(x, qw, s.to(torch.int8), s[:, 0], None, None, 128, 256)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        p.triton_op(x.float())


class _Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        p = make_problem(FORMATS["w4-g128"], N, K, torch.float16, seed=4)
        self.op = p.triton_op

    def forward(self, x):
        return self.op(x) * 2


def test_fake_impl_and_export():
    layer = _Layer()
    x = make_x16(20, K, torch.float16, seed=5)
    ep = torch.export.export(layer, (x,))
    assert OPS.weight_only_uint_linear.default in [n.target for n in ep.graph.nodes]
    y = ep.module()(x)
    assert y.shape == (20, N) and y.dtype == torch.float16
    assert torch.equal(y, layer(x))
