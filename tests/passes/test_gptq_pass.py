"""The ``gptq`` pass through ``qcompiler.compile``: the graph it leaves, and that every layer's
stored codes are GPTQ of that layer against the Hessian of the inputs it gets *after* the layers
before it were quantized (recomputed here in plain PyTorch)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcompiler
from qcompiler.errors import ConfigError
from qcompiler.ops.weight_only import unpacked_codes
from qcompiler.graph.nodes import is_linear
from qcompiler.quant import dequantize_uint
from qcompiler.quant.gptq import HessianAccumulator, gptq_quantize
from qcompiler.spec import get_spec

WO = torch.ops.qcompiler.weight_only_linear.default


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(32, 32, generator=torch.Generator().manual_seed(0)) / 6 + 0.3 * torch.eye(32)
    out = []
    for _ in range(n):
        x = torch.randn(8, 32, generator=g) @ mix
        x[:, 3] *= 6.0
        out.append(x)
    return out


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()


def _stored(qm):
    """layer -> dequantized stored weight, read back from the weight-only op's buffers."""
    out = {}
    for gm in qm.graph_modules.values():
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is WO:
                spec = get_spec(node)
                x, qw, sc, zp, _, bits, g = node.args
                codes = unpacked_codes(getattr(gm, qw.target), bits, spec.in_features)
                zeros = getattr(gm, zp.target) if zp is not None else None
                out[spec.layer] = dequantize_uint(codes, getattr(gm, sc.target), zeros, bits, g)
    return out


def _reference(model, cal, **kw):
    """GPTQ layer by layer, by hand: layer 2's Hessian from the *quantized* layer 0's outputs."""
    w0, b0, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    acc0 = HessianAccumulator(32)
    for x in cal:
        acc0.add(x)
    q0 = gptq_quantize(w0, acc0.hessian, 4, **kw).dequantized
    acc2, acc2_float = HessianAccumulator(64), HessianAccumulator(64)
    for x in cal:
        acc2.add(F.gelu(F.linear(x, q0, b0)))
        acc2_float.add(F.gelu(F.linear(x, w0, b0)))
    return q0, gptq_quantize(w2, acc2.hessian, 4, **kw).dequantized, \
        gptq_quantize(w2, acc2_float.hessian, 4, **kw).dequantized


@pytest.mark.parametrize("act_order", [False, True])
def test_codes_are_gptq_of_the_quantized_prefix(act_order):
    model, cal = _mlp(), _data(3, seed=1)
    kw = dict(group_size=16, symmetric=True, block_size=16, act_order=act_order)
    qm = qcompiler.compile(model, "gptq-w4", cal, progress=False, verify=True, **kw)
    got = _stored(qm)
    q0, q2, q2_float_inputs = _reference(model, cal, **kw)
    assert torch.equal(got["0"], q0)
    assert torch.equal(got["2"], q2)
    assert not torch.equal(q2, q2_float_inputs)  # the sequential order matters, so the check can fail


def test_graph_report_and_accuracy_against_round_to_nearest():
    model, cal, test = _mlp(), _data(16, seed=2), _data(4, seed=3)  # 128 calibration rows for K = 32, 64
    qm = qcompiler.compile(model, "gptq-w4", cal, progress=False, verify=True, group_size=16, block_size=16)
    gm = qm.graph_modules["<model>"]
    assert sum(n.op == "call_function" and n.target is WO for n in gm.graph.nodes) == 2
    assert not any(is_linear(n) or n.op == "call_module" and "tap" in str(n.target) for n in gm.graph.nodes)
    assert not [b for b in dict(gm.named_buffers()) if "gptq_dq" in b]  # the float copies are gone (dce)
    rep = qm.report()
    assert all(any(n.startswith("gptq: 128 calibration rows") for n in r.notes) for r in rep.layers)
    assert all(r.sqnr_db is not None and r.sqnr_db > 15 for r in rep.layers)
    rtn = qcompiler.compile(model, "w4-weight-only", cal, progress=False, group_size=16)
    x = torch.cat(test)
    with torch.no_grad():
        ref = model.double()(x.double())
        model.float()
        e_gptq = ((qm(x).double() - ref).norm() / ref.norm()).item()
        e_rtn = ((rtn(x).double() - ref).norm() / ref.norm()).item()
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)  # measured 0.055 vs 0.085


def test_needs_calibration_and_checks_options():
    with pytest.raises(ConfigError, match="needs calibration data"):
        qcompiler.compile(_mlp(), "gptq-w4", example_inputs=torch.randn(2, 32), progress=False)
    with pytest.raises(ConfigError, match="group_size must be"):
        qcompiler.compile(_mlp(), "gptq-w4", _data(1, 0), progress=False, group_size=-1)
    with pytest.raises(ConfigError, match="percdamp"):
        qcompiler.parse_pipeline("gptq{percdamp=-0.5}")
    with pytest.raises(ConfigError, match="torch device"):
        qcompiler.parse_pipeline("gptq{device=gpu0}")


def test_pipeline_text_round_trips():
    text = qcompiler.pipeline_for("gptq-w4", act_order=True, device="cpu")
    assert "gptq{" in text and "act_order=true" in text and "device=cpu" in text
    assert qcompiler.print_pipeline(qcompiler.parse_pipeline(text)) == \
        qcompiler.print_pipeline(qcompiler.parse_pipeline(qcompiler.print_pipeline(qcompiler.parse_pipeline(text))))
    p = qcompiler.parse_pipeline(qcompiler.pipeline_for("gptq-w8"))
    assert p[2].bits == 8 and p[2].group_size == 0 and p[3].device is None


def test_save_and_load_round_trip(tmp_path):
    """Nothing is recalibrated on load: the stored codes come back and compute the same outputs."""
    model, cal = _mlp(), _data(4, seed=1)
    qm = qcompiler.compile(model, "gptq-w4", cal, progress=False, group_size=16, block_size=16)
    qcompiler.save(qm, tmp_path / "gptq")
    loaded = qcompiler.load(tmp_path / "gptq", model)
    with torch.no_grad():
        assert torch.equal(loaded(cal[0]), qm(cal[0]))
