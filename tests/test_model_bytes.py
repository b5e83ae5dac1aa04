"""Bug #9.3 (second half): tied weights counted once in the report's whole-model bytes."""

import torch

import qcompiler
from qcompiler.model_bytes import state_bytes, tied_weights, unique_bytes


def _by_identity(module) -> int:
    # independent reference: the same Parameter object under two names counts once
    unique = {id(t): t for t in module.state_dict(keep_vars=True).values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def test_unique_bytes_views_and_overlaps():
    a = torch.zeros(10)
    assert unique_bytes([a, a]) == 40
    assert unique_bytes([a[2:8], a]) == 40
    assert unique_bytes([a[2:5], a[5:]]) == 32       # adjacent spans: elements 2..9
    assert unique_bytes([a[0:3], a[6:9]]) == 24      # disjoint spans of one storage
    m = torch.zeros(4, 6, dtype=torch.float16)
    assert unique_bytes([m, m.t()]) == 48           # a transpose is the same bytes
    assert unique_bytes([torch.zeros(0), torch.zeros(3, dtype=torch.int8)]) == 3


def test_gpt2_tied_lm_head_counted_once(make_tiny_hf, make_token_batches):
    model = make_tiny_hf("gpt2")
    assert tied_weights(model)["lm_head.weight"] == ["transformer.wte.weight"]
    summed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert state_bytes(model) == _by_identity(model) < summed  # the old count was `summed`

    qm = qcompiler.compile(model, "int8-outlier", make_token_batches(2, 1, 8), progress=False)
    report = qm.report()
    assert report.model_bytes_before == _by_identity(model)
    assert report.model_bytes_after == _by_identity(qm.program.root)
    lm_head = next(r for r in report.layers if r.layer == "lm_head")
    assert any("tied to transformer.wte.weight" in n for n in lm_head.notes)
    assert "tied to" not in " ".join(n for r in report.layers if r.layer != "lm_head" for n in r.notes)


def test_threshold_zero_notes_each_layer():
    # Bug #9.6: threshold=0 keeps every column in float, so the "quantized" layer is bigger than
    # the float one; the report must say so per layer.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    data = [torch.randn(8, 64)]
    rows = qcompiler.compile(model, "int8-outlier", data, threshold=0, progress=False).report().layers
    for r in rows:
        assert r.bytes_after > r.bytes_before  # the fact the note is about
        assert any("more than the float weight" in n and "input columns are outliers" in n for n in r.notes), r.notes
        assert any("threshold 0" in n for n in r.notes)
    rows = qcompiler.compile(model, "int8-outlier", data, progress=False).report().layers
    assert not any("more than the float weight" in n or "threshold 0" in n for r in rows for n in r.notes)
    rows = qcompiler.compile(model, "int8-outlier", example_inputs=data[0], threshold=0, progress=False).report().layers
    assert all(any("threshold 0" in n for n in r.notes) for r in rows)  # dynamic: nothing stored, still noted
