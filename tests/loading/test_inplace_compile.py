"""compile(model, inplace=True): block by block without a copy, same model as the copying compile."""

import copy

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.errors import ConfigError


@pytest.mark.parametrize("scheme", ["int8-outlier", "gptq-w4"])
def test_inplace_equals_copying_compile(scheme, llama_dir, calib, prompt):
    model = llama_dir[0]
    ref = qcompiler.compile(model, scheme=scheme, calibration_data=calib, progress=False)
    mine = copy.deepcopy(model)
    qm = qcompiler.compile(mine, scheme=scheme, calibration_data=calib, progress=False, inplace=True)
    assert qm.model is mine, "the model passed in is the compiled one's inside"
    with torch.no_grad():
        a, b = qm(prompt).logits, ref(prompt).logits
    if scheme == "gptq-w4":  # block-wise vs whole-model sequential calibration: float rounding apart
        f = model(prompt).logits
        assert (a - f).norm() <= 1.25 * (b - f).norm() + 1e-3
    else:
        assert torch.equal(a, b)
    assert qm.report().output_rel_error == pytest.approx(ref.report().output_rel_error, rel=0.25)
    assert not [n for n, p in mine.named_parameters() if p.dim() == 2 and "proj" in n], \
        "no float projection weight is left in the model"


def test_inplace_without_blocks_and_bad_options():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(4, 16)
    ref = qcompiler.compile(m, "w8-weight-only", example_inputs=x, progress=False)
    qm = qcompiler.compile(copy.deepcopy(m), "w8-weight-only", example_inputs=x, progress=False, inplace=True)
    assert torch.equal(qm(x), ref(x))
    with pytest.raises(ConfigError, match="inplace=True"):
        qcompiler.compile(m, "w8-weight-only", example_inputs=x, progress=False, inplace=True, whole_graph=True)
