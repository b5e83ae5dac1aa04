"""backend="triton" refuses what its kernels cannot run, unless the user allows a fallback; then
the report says, per layer, why the layer kept the reference op."""

import pytest
import torch
from torch import nn

import qcompiler


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the kernels run interpreted


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)).to(DEVICE)  # float32: no kernel


def test_float32_layers_are_refused_without_fallback():
    with pytest.raises(qcompiler.PassError, match="lower-triton") as e:
        qcompiler.compile(_model(), "int8-outlier", [torch.randn(4, 32, device=DEVICE)], backend="triton",
                          progress=False)
    assert "float32" in str(e.value)


def test_fallback_is_reported_per_layer():
    model = _model()
    x = torch.randn(4, 32, device=DEVICE)
    qm = qcompiler.compile(model, "int8-outlier", [x], backend="triton", progress=False, allow_fallback=True)
    rows = qm.report().layers
    assert len(rows) == 2
    for row in rows:
        assert any("fell back to the reference op" in n for n in row.notes), row.notes
        assert row.lowering == "reference"
    assert ((qm(x) - model(x)).norm() / model(x).norm()).item() < 0.02
