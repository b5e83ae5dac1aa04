"""Bug #9.1: ``eval()`` / ``train()`` on a compiled model (torch.export's module raised on both)."""

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.errors import UnsupportedError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 32))


@pytest.mark.parametrize("capture", ["export", "symbolic_trace"])
def test_eval_works_and_keeps_outputs(capture):
    x = torch.randn(8, 64)
    qm = qcompiler.compile(_model(), "int8-vectorwise", [x], capture=capture, progress=False)
    before = qm(x)
    assert qm.eval() is qm
    assert qm.train(False) is qm
    assert not any(m.training for m in qm.modules())
    torch.testing.assert_close(qm(x), before, rtol=0, atol=0)  # eval is what compile already ran


def test_train_raises_clearly_and_changes_nothing():
    x = torch.randn(8, 64)
    qm = qcompiler.compile(_model(), "int8-vectorwise", [x], progress=False)
    with pytest.raises(UnsupportedError, match="inference only") as e:
        qm.train()
    assert "prepare_qat" in e.value.hint
    assert not any(m.training for m in qm.modules())  # all or nothing: no flag flipped


def test_train_on_inner_model_names_the_region():
    x = torch.randn(8, 64)
    qm = qcompiler.compile(_model(), "int8-vectorwise", [x], progress=False, whole_graph=True)
    with pytest.raises(UnsupportedError, match="region '<model>'"):
        qm.model.train()


def test_eval_on_hf_model_with_regions(make_tiny_hf, make_token_batches):
    model = make_tiny_hf("gpt2")
    data = make_token_batches(2, 1, 8)
    qm = qcompiler.compile(model, "int8-outlier", data, progress=False)
    ref = qm(**data[0]).logits
    qm.model.eval()  # what inference code does on the HF model itself
    torch.testing.assert_close(qm.eval()(**data[0]).logits, ref, rtol=0, atol=0)


def test_report_compares_in_eval_mode_and_keeps_the_users_mode():
    # Bug #9.3: a model passed in train mode made the reference run with dropout on (rel. error
    # 0.698 for a true 0.010). compile must measure in eval mode and leave the user's flags alone.
    torch.manual_seed(0)
    data = [torch.randn(16, 64) for _ in range(2)]
    model = _model()
    ref = qcompiler.compile(model.eval(), "int8-vectorwise", data, progress=False).report()
    model.train()
    model[1].eval()  # a mixed state, restored as it was
    got = qcompiler.compile(model, "int8-vectorwise", data, progress=False).report()
    assert got.output_rel_error == ref.output_rel_error < 0.05
    assert [m.training for m in model.modules()] == [True, True, False, True, True]
    assert any("passed in train mode" in n for n in got.notes)
    assert not any("train mode" in n for n in ref.notes)
