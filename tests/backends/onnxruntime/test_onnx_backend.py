"""``compile(..., backend="onnxruntime")``: the returned model runs in ONNX Runtime behind the
model's call signature, and its report says which ONNX operators each layer became."""

from __future__ import annotations

import torch

import qcompiler
from qcompiler.backends import get_backend
from qcompiler.backends.onnxruntime import OrtModule

from onnx_helpers import outlier_x, rel_err


def test_compile_backend_onnxruntime(mlp, mlp_calibration):
    assert get_backend("onnxruntime").finalize is not None
    qm = qcompiler.compile(mlp, "int8-outlier", mlp_calibration, backend="onnxruntime", progress=False)
    assert isinstance(qm.model, OrtModule) and qm.model.providers[0] == "CPUExecutionProvider"
    for shape in [(2, 8, 24), (5, 3, 24)]:
        x = outlier_x(*shape, seed=7)
        with torch.no_grad():
            got, eager = qm(x), qm.program.root(x)  # program.root: the eager graphs, kept
        # the same int8 codes in both: float rounding only (measured ~1e-7)
        assert got.shape == eager.shape and rel_err(got, eager) <= 1e-5
    report = qm.report()
    assert report.backend == "onnxruntime"
    assert all(r.lowering.startswith("onnx:MatMulInteger(u8 x u8)") for r in report.quantized)
    assert any(n.startswith("runs in ONNX Runtime (CPUExecutionProvider)") for n in report.notes)
    # compile compared the ORT model's outputs to the float model's on the calibration data
    assert report.output_cosine is not None and report.output_cosine > 0.999
    assert qm.gm is qm.program.root.gm  # attributes the session lacks come from the eager model
