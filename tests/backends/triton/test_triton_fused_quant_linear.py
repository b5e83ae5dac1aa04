"""The int8 GEMM with the activation quantization fused in (row-absmax prologue + in-register
quantization) against the separate path (``quantize_rowwise`` kernel + int8 GEMM) and the
reference ops.

Tolerance: none against the separate path. Both compute the same int8 codes (round half to even
of the same float32 product), the same exact int32 sums and the same float32 epilogue
(one shared ``@triton.jit`` function), so the outputs must be equal bit for bit; on the GPU this
also checks the inline-PTX rounding of the fused loop against the floor-based one of the
quantize kernel. Against the reference ops: the bound of ``test_triton_int8_linear``.
"""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE, eps, make_static_weights, make_x

import qcompiler
from qcompiler.backends.triton.act_quant import FUSED_MIN_M, ActQuant, fuses_act_quant, parse_act_quant
from qcompiler.backends.triton.fused_quant_linear import (int8_dynamic_outlier_linear_fused,
                                                          int8_outlier_linear_fused)
from qcompiler.backends.triton.outlier_linear import int8_dynamic_outlier_linear, int8_outlier_linear
from qcompiler.backends.triton.quantize_rowwise import outlier_mask_from_idx
from qcompiler.backends.triton.row_absmax import row_absmax
from qcompiler.errors import ConfigError
from qcompiler.ops import quantize_weight

OPS = torch.ops.qcompiler_triton
REF = torch.ops.qcompiler
DTYPES = [torch.float16, torch.bfloat16]
# M just past the weight-only switch, K and N not multiples of the tiles, K longer than a tile.
SHAPES = [(17, 1000, 333), (40, 256, 300), (33, 300, 130)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_out", [0, 1, 20])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_fused_static_equals_separate_and_reference(m, k, n, n_out, dtype):
    x, idx = make_x(m, k, n_out, dtype, seed=m + k + n_out)
    _, wq, ws, wo, bias = make_static_weights(n, k, idx, dtype, seed=n_out)
    mask = outlier_mask_from_idx(idx, k)
    sep = int8_outlier_linear(x, wq, ws, idx, mask, wo, bias, ActQuant.SEPARATE)
    fused = int8_outlier_linear(x, wq, ws, idx, mask, wo, bias, ActQuant.FUSED)
    assert fused.shape == (m, n) and fused.dtype == dtype
    assert torch.equal(fused, sep), (fused.float() - sep.float()).abs().max().item()
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    ref = REF.int8_linear(xq, xs, wq, ws, xo if n_out else None, wo if n_out else None, bias, dtype).float()
    mag = (xo.float().abs() @ wo.float().abs().t()) if n_out else 0.0
    # 16-bit output rounding on both sides + the reference's rounding of the outlier product.
    tol = 2 * eps(dtype) * ref.abs() + eps(dtype) * mag + 1e-6
    assert ((fused.float() - ref).abs() <= tol).all()


def test_fused_static_no_bias_no_mask_given_3d_input():
    # Leading dims kept; the mask is built from the index list when the caller has none.
    dtype = torch.float16
    x, idx = make_x(2 * 19, 200, 3, dtype, seed=5)
    _, wq, ws, wo, _ = make_static_weights(70, 200, idx, dtype, seed=5)
    x3 = x.reshape(2, 19, 200)
    fused = int8_outlier_linear_fused(x3, wq, ws, idx, None, wo, None)
    sep = int8_outlier_linear(x3, wq, ws, idx, None, wo, None, ActQuant.SEPARATE)
    assert fused.shape == (2, 19, 70) and torch.equal(fused, sep)


@pytest.mark.parametrize("n_out", [0, 5])
def test_fused_dynamic_equals_separate(n_out):
    dtype = torch.float16
    x, _ = make_x(48, 700, n_out, dtype, seed=n_out + 3)
    g = torch.Generator().manual_seed(4)
    wq, ws = quantize_weight((torch.randn(90, 700, generator=g) * 0.05).to(DEVICE))
    bias = (torch.randn(90, generator=g) * 0.1).to(DEVICE, dtype)
    sep = int8_dynamic_outlier_linear(x, wq, ws, 6.0, bias, ActQuant.SEPARATE)
    fused = int8_dynamic_outlier_linear_fused(x, wq, ws, 6.0, bias)
    assert torch.equal(fused, sep), (fused.float() - sep.float()).abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_row_absmax_equals_quantize_rowwise_scale(dtype):
    x, idx = make_x(37, 5000, 6, dtype, seed=9)
    x[3] = 0  # a zero row gets the floor, not 0
    mask = outlier_mask_from_idx(idx, 5000)
    assert torch.equal(row_absmax(x, mask), REF.quantize_rowwise(x, idx)[1])
    assert torch.equal(row_absmax(x), REF.quantize_rowwise(x, idx[:0])[1])


def test_fused_refuses_bad_operands():
    x, idx = make_x(20, 64, 0, torch.float16, seed=1)
    _, wq, ws, _, _ = make_static_weights(32, 64, idx, torch.float16, seed=1)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        int8_outlier_linear_fused(x.float(), wq, ws, idx, None, None, None)
    with pytest.raises(ValueError, match=r"wq must be int8 \[N, 63\]"):
        int8_outlier_linear_fused(x[:, :63], wq, ws, idx, None, None, None)


def test_act_quant_choice_and_parsing():
    assert fuses_act_quant(ActQuant.FUSED, 17, 64, 64) and not fuses_act_quant(ActQuant.SEPARATE, 4096, 64, 64)
    # AUTO follows the measured threshold (None: the fused GEMM lost at every shape measured).
    for m in (17, 512, 2048):
        assert fuses_act_quant(ActQuant.AUTO, m, 4096, 4096) == (FUSED_MIN_M is not None and m >= FUSED_MIN_M)
    assert parse_act_quant("fused") is ActQuant.FUSED and parse_act_quant("SEPARATE") is ActQuant.SEPARATE
    with pytest.raises(ConfigError, match="act_quant must be"):
        fuses_act_quant(7, 100, 64, 64)
    with pytest.raises(ConfigError, match="not one of auto, separate, fused"):
        parse_act_quant("inline")


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 40)).to(DEVICE, dtype)


def _batches(dtype, rows=24, n=3):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randn(rows, 64, generator=g)
        x[:, [3, 17, 40]] *= 20
        out.append(x.to(DEVICE, dtype))
    return out


@pytest.mark.parametrize("scheme", ["int8-outlier", "w8a8-smoothquant"])
def test_lowering_option_selects_path_same_outputs(scheme):
    from qcompiler.passes.lower_triton import LowerTriton  # noqa: F401 - registers the pass
    model, cal = _model(torch.float16), _batches(torch.float16)
    outs = {}
    for mode in ("separate", "fused"):
        text = qcompiler.pipeline_for(scheme) + f",lower-triton{{act_quant={mode}}},dce"
        qm = qcompiler.compile(model, scheme, cal, pipeline=text, progress=False)
        calls = [n for gm in qm.graph_modules.values() for n in gm.graph.nodes
                 if n.op == "call_function" and n.target is OPS.int8_outlier_linear.default]
        assert len(calls) == 2 and all(n.args[-1] == int(parse_act_quant(mode)) for n in calls)
        assert all(f"X quantized {'inside the GEMM' if mode == 'fused' else 'by a separate kernel'}"
                   in r.lowering for r in qm.report().quantized)
        outs[mode] = qm(cal[0])
    assert torch.equal(outs["fused"], outs["separate"])
    with pytest.raises(ConfigError, match="act_quant"):
        qcompiler.compile(model, scheme, cal, pipeline=qcompiler.pipeline_for(scheme)
                          + ",lower-triton{act_quant=inline}", progress=False)


def test_fused_op_traces_fullgraph():
    # The op's fake implementation takes the new argument: Dynamo captures it with no graph break.
    x, idx = make_x(24, 64, 2, torch.float16, seed=2)
    _, wq, ws, wo, bias = make_static_weights(32, 64, idx, torch.float16, seed=2)
    mask = outlier_mask_from_idx(idx, 64)

    def f(x):
        return OPS.int8_outlier_linear(x, wq, ws, idx, mask, wo, bias, int(ActQuant.FUSED))

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), f(x))
