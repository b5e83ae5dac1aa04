"""Bug #9.4: ``allow_fallback=True`` where the device is the reason (an fp16 model on a CPU without
the interpreter, or no triton at all): layers fall back, and so must the quantize ops feeding
them (``lower-triton`` used to move every quantize op to Triton: "0 active drivers")."""

import pytest
import torch
from torch import nn

import qcompiler
import qcompiler.backends.triton as qtriton


class _NoTritonOps:
    """``torch.ops.qcompiler_triton`` where triton is not installed: no op is registered."""

    def __getattr__(self, name):
        raise AttributeError(f"'_OpNamespace' 'qcompiler_triton' object has no attribute '{name}'")


@pytest.fixture(params=["cpu-no-interpreter", "no-triton"])
def kernels_unavailable(request, monkeypatch):
    monkeypatch.setattr(qtriton, "_interpreting", lambda: False)  # the kernels cannot run on this CPU
    if request.param == "no-triton":
        monkeypatch.setattr(qtriton, "_TRITON_ERROR", "triton is not importable (No module named 'triton')")
        monkeypatch.setattr(torch.ops, "qcompiler_triton", _NoTritonOps())
    return request.param


def _fp16_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).half()


def _triton_nodes(qm) -> list[str]:
    return [f"{n.name}: {n.target}" for gm in qm.graph_modules.values() for n in gm.graph.nodes
            if n.op == "call_function" and getattr(n.target, "namespace", None) == "qcompiler_triton"]


@pytest.mark.parametrize("scheme", ["int8-outlier", "int8-vectorwise", "int8-vectorwise", "w4-weight-only"])
def test_every_layer_falls_back_with_its_quantize_ops(kernels_unavailable, scheme):
    model = _fp16_model()
    x = torch.randn(8, 64).half()
    with pytest.raises(qcompiler.UnsupportedError, match="backend 'triton' cannot run here"):
        qcompiler.compile(model, scheme, [x], backend="triton", progress=False)
    qm = qcompiler.compile(model, scheme, [x], backend="triton", allow_fallback=True, progress=False)
    assert _triton_nodes(qm) == []  # nothing left for a device that cannot run it
    eager = qcompiler.compile(model, scheme, [x], progress=False)
    torch.testing.assert_close(qm(x), eager(x), rtol=0, atol=0)  # exactly the reference ops
    report = qm.report()
    assert all(any("fell back to the reference op" in n for n in r.notes) for r in report.layers)
    assert all(r.lowering == "reference" for r in report.layers)
    assert any("backend 'triton' cannot run here" in n for n in report.notes)


class _TwoHeads(nn.Module):
    """Two linears reading one input: share-activation-quant gives them one quantize node."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 32), nn.Linear(64, 16)

    def forward(self, x):
        return self.a(x), self.b(x)


def test_quantize_shared_with_a_fallen_back_layer_stays_in_torch(monkeypatch):
    verdicts = iter([(True, "kernels here"), (False, "this layer's device cannot run them")])
    monkeypatch.setattr(qtriton, "is_available", lambda device=None: next(verdicts))
    torch.manual_seed(0)
    model, x = _TwoHeads().half(), torch.randn(8, 64).half()
    qm = qcompiler.compile(model, "int8-vectorwise", [x], backend="eager", allow_fallback=True, progress=False,
                           pipeline=qcompiler.pipeline_for("int8-vectorwise") + ",lower-triton{fallback=true},dce")
    gm = next(iter(qm.graph_modules.values()))
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and hasattr(n.target, "namespace")]
    by_op = {n.target.overloadpacket.__name__: n.target.namespace for n in calls}
    lowered = [n for n in calls if n.target.namespace == "qcompiler_triton"]
    assert len(lowered) == 1 and lowered[0].target.overloadpacket.__name__.startswith("int8_")  # layer a
    quant = [n for n in calls if "quantize" in n.target.overloadpacket.__name__]
    assert quant and all(n.target.namespace == "qcompiler" for n in quant), by_op  # b still reads it
    rows = {r.layer: r for r in qm.report().layers}
    assert rows["a"].lowering.startswith("triton:") and rows["b"].lowering == "reference"
    assert any("this layer's device cannot run them" in n for n in rows["b"].notes)
    torch.testing.assert_close(qm(x)[1], qcompiler.compile(model, "int8-vectorwise", [x], progress=False)(x)[1],
                               rtol=0, atol=0)
