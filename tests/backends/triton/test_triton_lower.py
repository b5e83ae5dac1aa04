"""``lower-triton`` / ``backend="triton"``: the graph after lowering (structure), its outputs
against the eager reference ops (numerics), and the errors and fallback where kernels can't run."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from triton_problems import DEVICE

import qcompiler
from qcompiler import UnsupportedError

OPS = torch.ops.qcompiler_triton
REF = torch.ops.qcompiler


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 40)).to(DEVICE, dtype)


def _batches(dtype, rows=24, n=4):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randn(rows, 64, generator=g)
        x[:, [3, 17, 40]] *= 20
        out.append(x.to(DEVICE, dtype))
    return out


def _targets(qm):
    return [n.target for gm in qm.graph_modules.values() for n in gm.graph.nodes
            if n.op == "call_function"]


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_backend_triton_lowers_and_matches_eager(static):
    dtype = torch.float16
    model, cal = _model(dtype), _batches(dtype)
    kw = dict(calibration_data=cal) if static else dict(example_inputs=cal[0])
    eager = qcompiler.compile(model, "int8-outlier", progress=False, **kw)
    tri = qcompiler.compile(model, "int8-outlier", backend="triton", progress=False, verify=True, **kw)
    targets = _targets(tri)
    fused = OPS.int8_outlier_linear.default if static else OPS.int8_dynamic_outlier_linear.default
    assert targets.count(fused) == 2
    assert not any(t in (REF.int8_linear.default, REF.int8_linear_dynamic_outlier.default,
                         REF.quantize_rowwise.default, REF.quantize_rowwise_dynamic.default)
                   for t in targets)
    assert all(r.lowering.startswith("triton:") for r in tri.report().quantized)
    for rows in (3, 24):  # weight-only path (M <= 16) and int8 x int8 path
        x = _batches(dtype, rows=rows, n=1)[0]
        y, ref = tri(x), eager(x)
        # Same int8 math for M > 16 (float rounding only); for M <= 16 X is not quantized,
        # so the difference is at most the int8 path's own X error: a few % of |y| here.
        rel = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
        assert rel < (2e-3 if rows > 16 else 0.03), (rows, rel)
        true = model(x).float()
        assert ((y.float() - true).norm() / true.norm()).item() < 0.02


def test_float32_model_unsupported_and_fallback():
    model, cal = _model(torch.float32), _batches(torch.float32)
    with pytest.raises(Exception, match="float16/bfloat16"):
        qcompiler.compile(model, "int8-outlier", cal, backend="triton", progress=False)
    from qcompiler.passes.lower_triton import LowerTriton  # noqa: F401 - registers the pass
    text = qcompiler.pipeline_for("int8-outlier") + ",lower-triton{fallback=true}"
    qm = qcompiler.compile(model, "int8-outlier", cal, pipeline=text, progress=False)
    assert REF.int8_linear.default in _targets(qm)
    notes = [n for r in qm.report().quantized for n in r.notes]
    assert any("fell back" in n and "float16/bfloat16" in n for n in notes), notes


def test_unavailable_device_raises(monkeypatch):
    import qcompiler.backends.triton as qt
    monkeypatch.setattr(qt, "is_available", lambda device=None: (False, "CUDA is not available"))
    import qcompiler.backends.triton.backend as be
    monkeypatch.setattr(be, "is_available", lambda device=None: (False, "CUDA is not available"))
    model, cal = _model(torch.float16), _batches(torch.float16)
    with pytest.raises(UnsupportedError, match="CUDA is not available"):
        qcompiler.compile(model, "int8-outlier", cal, backend="triton", progress=False)
