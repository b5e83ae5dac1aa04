"""Bug #9.6: ``qm.half()`` then a float16 input returned float32 (int8 matmuls carry a fixed
``out_dtype``); outputs must come back in the input/model dtype."""

import pytest
import torch
from torch import nn

import qcompiler

# 4-bit weights: the error of the format, not of the dtype change (measured 0.04 - 0.12)
_BOUND = {"w4-weight-only": 0.2, "nf4": 0.2, "gptq-w4": 0.2, "awq-w4": 0.2}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).eval()


def _rel(y, ref):
    return ((y.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("scheme", qcompiler.list_schemes())
def test_half_then_float_follow_the_model(scheme):
    model = _model()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(8, 64, generator=g) for _ in range(2)]
    qm = qcompiler.compile(model, scheme, data, progress=False)
    x = data[0]
    y32 = qm(x)
    assert y32.dtype is torch.float32
    ref16 = _model().half()(x.half())
    y16 = qm.half()(x.half())
    assert y16.dtype is torch.float16
    assert _rel(y16, ref16) < _BOUND.get(scheme, 0.05)
    y = qm.float()(x)
    assert y.dtype is torch.float32
    assert _rel(y, y32) < 1e-2  # back to fp32: only the fp16 round trip of the scales differs


def test_bfloat16_and_dynamic_outliers():
    model = _model()
    x = torch.randn(8, 64)
    qm = qcompiler.compile(model, "int8-outlier", example_inputs=x, progress=False)  # dynamic mode
    assert qm.to(torch.bfloat16)(x.bfloat16()).dtype is torch.bfloat16
    qm = qcompiler.compile(model, "int8-vectorwise", [x], progress=False)
    assert qm.to(torch.bfloat16)(x.bfloat16()).dtype is torch.bfloat16
    assert qm.to("cpu")(x.bfloat16()).dtype is torch.bfloat16  # a device move keeps the dtype
