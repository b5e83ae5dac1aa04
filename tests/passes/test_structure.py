"""Structural tests: run the int8-outlier pipeline one pass at a time and check which ops each
pass leaves in the graph."""

from collections import Counter

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompiler.calibration import CalibrationSet
from qcompiler.capture import CaptureMethod, capture_regions
from qcompiler.pass_manager import PassContext, PassManager, Program, Region
from qcompiler.passes.calibrate import ActivationStats
from qcompiler.spec import OutlierMode, get_spec

aten, qc = torch.ops.aten, torch.ops.qcompiler


class QKV(nn.Module):
    """Three projections reading the same tensor (attention's q/k/v) plus an output projection."""

    def __init__(self, d=32):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        return self.o(self.q(x) * self.k(x) + self.v(x))


def _ops(gm):
    return Counter(n.target for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem)


def _setup(model, data, method=CaptureMethod.EXPORT):
    plan = capture_regions(model, (data[0],), {}, method)
    program = Program([Region(p, r) for p, r in plan.regions], plan.regions[0][1])
    ctx = PassContext(calibration_data=CalibrationSet.from_user(data), verify=True)
    return program, ctx


def _step(program, ctx, text):
    PassManager(text).run(program, ctx)
    return program.regions[0].gm


@pytest.mark.parametrize("method", list(CaptureMethod))
def test_int8_outlier_pipeline_pass_by_pass(method):
    torch.manual_seed(0)
    data = [torch.randn(4, 32) for _ in range(3)]
    for d in data:
        d[:, [1, 7]] *= 20
    model = QKV()
    float_out = model(data[0]).detach()
    program, ctx = _setup(model, data, method)

    gm = _step(program, ctx, "canonicalize-linear")
    assert _ops(gm)[aten.linear.default] == 4
    gm = _step(program, ctx, "annotate-linears")
    specs = [get_spec(n) for n in gm.graph.nodes if get_spec(n)]
    assert sorted(s.layer for s in specs) == ["k", "o", "q", "v"]
    gm = _step(program, ctx, "calibrate{progress=false}")
    assert not any(n.op == "call_module" and "observer" in n.target for n in gm.graph.nodes)
    assert _ops(gm)[aten.linear.default] == 4
    gm = _step(program, ctx, "detect-outliers{threshold=6.0}")
    by_layer = {get_spec(n).layer: get_spec(n) for n in gm.graph.nodes if get_spec(n)}
    assert by_layer["q"].outlier_idx == by_layer["k"].outlier_idx == (1, 7)
    assert all(s.outliers is OutlierMode.STATIC for s in by_layer.values())
    gm = _step(program, ctx, "quantize-weights")
    assert _ops(gm)[aten.linear.default] == 4  # weights quantized, graph not yet rewritten
    gm = _step(program, ctx, "decompose-matmul")
    ops = _ops(gm)
    assert ops[aten.linear.default] == 0
    assert ops[qc.quantize_rowwise.default] == 4 and ops[qc.int8_linear.default] == 4
    gm = _step(program, ctx, "share-activation-quant")
    ops = _ops(gm)
    assert ops[qc.quantize_rowwise.default] == 2  # q/k/v share one; o has its own input
    assert ops[qc.int8_linear.default] == 4
    gm = _step(program, ctx, "dce")
    names = [n for n, _ in gm.named_parameters()]
    assert not any(n.endswith("weight") for n in names), names  # float weights are gone
    out = program.regions[0].module(data[0])
    assert ((out - float_out).norm() / float_out.norm()).item() < 0.02


def test_canonicalize_linear_forms():
    class Forms(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(16, 8))
            self.wt = nn.Parameter(torch.randn(8, 16))  # [K, N], as GPT-2's Conv1D stores it
            self.b = nn.Parameter(torch.randn(16))
            self.lin = nn.Linear(8, 16)

        def forward(self, x):
            a = F.linear(x, self.w, self.b)
            b = x @ self.w.t()
            c = torch.addmm(self.b, x, self.wt)
            d = torch.matmul(x, self.wt)
            e = self.lin(x)
            scores = a @ b.t()  # activation @ activation: not a linear layer
            return a + b + c + d + e, scores

    x = torch.randn(5, 8)
    for method in CaptureMethod:
        m = Forms()
        ref = m(x)
        program, ctx = _setup(m, [x], method)
        gm = _step(program, ctx, "canonicalize-linear")
        assert _ops(gm)[aten.linear.default] == 5, (method, gm.code)
        out = gm(x=x) if method is CaptureMethod.EXPORT else gm(x)
        for o, r in zip(out, ref):
            torch.testing.assert_close(o, r)


def test_calibrate_records_true_max_and_rejects_nan_activations():
    class Blowup(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.b(torch.log(self.a(x)))  # log of negatives: NaN reaches b

    data = [torch.randn(4, 8) for _ in range(3)]
    program, ctx = _setup(nn.Sequential(nn.Linear(8, 8)), data)
    _step(program, ctx, "canonicalize-linear,annotate-linears,calibrate{progress=false}")
    (stats,) = ctx.analyses.get(ActivationStats, program.regions[0], ctx).values()
    torch.testing.assert_close(stats.absmax, torch.cat(data).abs().amax(0))
    assert stats.rows == 12

    from qcompiler.errors import PassError
    program, ctx = _setup(Blowup(), data)
    with pytest.raises(PassError, match="non-finite activations reach layer"):
        _step(program, ctx, "canonicalize-linear,annotate-linears,calibrate{progress=false}")
