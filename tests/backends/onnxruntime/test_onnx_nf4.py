"""nf4 -> ONNX: ONNX Runtime's MatMulBnb4 (ort-cuda target; its CPU kernel runs here) and the
standard-operator form, against qcompiler's nf4 reference op (eager), plus double quantization."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import qcompiler

from onnx_helpers import onnx_ops, rel_err, run_ort

# the same float32 dequantization and an fp32 GEMM on both sides: rounding only
PARITY = 1e-5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 128)).eval()


@pytest.mark.parametrize("target,block,double_quant,bnb4_layers", [
    ("ort-cuda", 32, False, 2),   # K = 128 and 96: both MatMulBnb4
    ("ort-cuda", 64, True, 1),    # K = 96 is no multiple of 64: that layer falls back to the standard form
    ("generic", 32, False, 0),    # standard operators only
    ("ort-cpu", 64, True, 0),
])
def test_nf4_parity(tmp_path, target, block, double_quant, bnb4_layers):
    model = _model()
    calib = [torch.randn(4, 128) for _ in range(2)]
    qm = qcompiler.compile(model, "nf4", calib, progress=False, block_size=block, double_quant=double_quant)
    out = qcompiler.export_onnx(qm, calib[0], tmp_path / "nf4.onnx", target=target)
    graph = onnx.load(str(out.path)).graph
    assert sum(n.op_type == "MatMulBnb4" for n in graph.node) == bnb4_layers
    if not bnb4_layers:
        assert all(d == "ai.onnx" for d, _ in onnx_ops(out.path))
    labels = sorted(out.lowering.values())
    assert sum(lab.startswith("ort:MatMulBnb4(nf4") for lab in labels) == bnb4_layers
    # 4-bit codes and per-block absmax stored, never a float per weight
    floats = [numpy_helper.to_array(t) for t in graph.initializer]
    assert max(a.size for a in floats if np.issubdtype(a.dtype, np.floating)) < 96 * 128 // 2
    for shape in ((3, 128), (9, 128)):
        x = torch.randn(*shape)
        with torch.no_grad():
            want = qm(x)
        assert rel_err(run_ort(out, x), want) <= PARITY
