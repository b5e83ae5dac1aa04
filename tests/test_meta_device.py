"""Bug #9.6: a model on the ``meta`` device gave a misleading PassError; now a clear error before
any work, naming the first tensor without values."""

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.errors import CalibrationError, ConfigError, UnsupportedError


def test_meta_model_is_refused_up_front():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(UnsupportedError, match="'meta' device \\(first: '0.weight'\\)") as e:
        qcompiler.compile(model, "int8-outlier", [torch.randn(8, 64)], progress=False)
    assert "load the weights" in e.value.hint
    assert calls == []  # nothing ran


def test_meta_inputs_are_refused():
    model = nn.Linear(64, 8)
    with pytest.raises(CalibrationError, match="calibration item 1 holds a tensor on the 'meta' device"):
        qcompiler.compile(model, "int8-outlier", [torch.randn(2, 64), torch.randn(2, 64, device="meta")],
                          progress=False)
    with pytest.raises(ConfigError, match="example_inputs hold a tensor on the 'meta' device"):
        qcompiler.compile(model, "int8-outlier", example_inputs=torch.randn(2, 64, device="meta"), progress=False)
