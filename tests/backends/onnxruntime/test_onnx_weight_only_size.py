"""Weight-only exports store the weights at their quantized size (issue #9, bug 8): the group
steps (and zero points) as ``[N, G]``, never broadcast to one float per weight, with parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import qcompiler

from onnx_helpers import rel_err, run_ort

GROUP = 64


def _model() -> nn.Module:
    torch.manual_seed(0)  # K = 320: five groups of 64; K = 256: four (big enough not to be folded whole)
    return nn.Sequential(nn.Linear(320, 256), nn.ReLU(), nn.Linear(256, 320)).eval()


def _stored_bytes(qm) -> int:
    """What the compiled layers hold: packed codes, steps, zero points, biases."""
    return sum(t.numel() * t.element_size() for gm in qm.graph_modules.values()
               for t in list(gm.state_dict().values()))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("target", ["generic", "ort-cpu"])
def test_w4_initializers_at_real_size(tmp_path, target, symmetric):
    model = _model()
    calib = [torch.randn(4, 320) for _ in range(2)]
    qm = qcompiler.compile(model, "w4-weight-only", calib, progress=False, group_size=GROUP, symmetric=symmetric)
    out = qcompiler.export_onnx(qm, calib[0], tmp_path / "w4.onnx", target=target)
    inits = [numpy_helper.to_array(t) for t in onnx.load(str(out.path)).graph.initializer]
    floats = [a for a in inits if np.issubdtype(a.dtype, np.floating)]
    # the largest float tensor a layer needs is its steps [N, G] (256 x 5); a broadcast [N, K] is 81920
    assert max(a.size for a in floats) <= 256 * (320 // GROUP)
    total = sum(a.nbytes for a in inits)
    assert total <= 1.05 * _stored_bytes(qm) + 1024, (total, _stored_bytes(qm))
    for shape in ((3, 320), (7, 320)):
        x = torch.randn(*shape)
        with torch.no_grad():
            want = qm(x)
        assert rel_err(run_ort(out, x), want) <= 1e-5
