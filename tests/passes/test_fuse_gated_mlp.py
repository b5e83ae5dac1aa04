"""``fuse_gated_mlp``: sibling fusion's MLP graph ends in one gated int8 op where (and only where)
the exact ``mul(silu(slice(y)), slice(y))`` shape is there; the model computes what the unfused
one does (``test_fuse_siblings.py`` checks outputs for every scheme; here: the graph, the report,
and the near misses that must be left alone)."""

from __future__ import annotations

import pytest
import torch
from torch import fx

import qcompiler
import qcompiler.backends.triton.ops  # noqa: F401 - registers the qcompiler_triton ops
from qcompiler.passes.fuse_gated_mlp import fuse_gated_mlp
from qcompiler.passes.fuse_siblings import unfuse_siblings

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter on a CPU machine
_OPS = torch.ops.qcompiler_triton
_ATEN = torch.ops.aten


def _compile(make_tiny_hf, make_token_batches, scheme):
    model = make_tiny_hf("llama").half().to(_DEVICE)
    cal = [{k: v.to(_DEVICE) for k, v in b.items()} for b in make_token_batches(n=2)]
    return qcompiler.compile(model, scheme, cal, backend="triton", progress=False)


def _mlp_fast(qm, layer=0):
    return qm.model.model.layers[layer].mlp._qc_fast


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("scheme", ["int8-outlier", "w8a8-smoothquant"])
def test_int8_mlp_runs_one_gated_op_and_the_report_says_so(scheme, make_tiny_hf, make_token_batches):
    qm = _compile(make_tiny_hf, make_token_batches, scheme)
    ops = _targets(_mlp_fast(qm))
    assert ops.count(_OPS.int8_outlier_linear_silu_mul.default) == 1
    assert _ATEN.silu.default not in ops and _ATEN.mul.Tensor not in ops and _ATEN.slice.Tensor not in ops
    notes = [n for r in qm.report().quantized for n in r.notes if "silu-mul-in-int8-gemm" in n]
    assert len(notes) == 2 * 2  # gate and up rows of both layers
    ids = torch.randint(3, 256, (2, 9), generator=torch.Generator().manual_seed(0)).to(_DEVICE)
    with torch.no_grad():
        fused = qm(input_ids=ids).logits
        unfuse_siblings(qm)
        plain = qm(input_ids=ids).logits
    if _DEVICE == "cpu":  # same ops on the CPU: equal to the bit
        assert torch.equal(fused, plain)
    else:  # the GPU's GEMM may take another tile for the wider N (see test_fuse_siblings._assert_same)
        assert ((fused.float() - plain.float()).norm() / plain.float().norm()).item() < 1e-2


def test_weight_only_mlp_keeps_its_eager_silu_mul(make_tiny_hf, make_token_batches):
    ops = _targets(_mlp_fast(_compile(make_tiny_hf, make_token_batches, "w4-weight-only")))
    assert _ATEN.silu.default in ops and _OPS.int8_outlier_linear_silu_mul.default not in ops


def _graph(h=8, k=16, up=(8, 16), act=_ATEN.silu.default, extra_use=False, swap=False, rows=16):
    """``mul(act(y[..., 0:h]), y[..., up])`` over an int8_outlier_linear of a ``rows x k`` weight."""
    root = torch.nn.Module()
    root.register_buffer("wq", torch.zeros(rows, k, dtype=torch.int8))
    root.register_buffer("ws", torch.ones(rows))
    root.register_buffer("idx", torch.zeros(0, dtype=torch.long))
    g = fx.Graph()
    x = g.placeholder("x")
    y = g.call_function(_OPS.int8_outlier_linear.default,
                        (x, g.get_attr("wq"), g.get_attr("ws"), g.get_attr("idx"), None, None, None))
    gate = g.call_function(_ATEN.slice.Tensor, (y, -1, 0, h))
    a = g.call_function(act, (gate,))
    u = g.call_function(_ATEN.slice.Tensor, (y, -1, *up))
    m = g.call_function(_ATEN.mul.Tensor, (u, a) if swap else (a, u))
    g.output((m, gate) if extra_use else m)
    return fx.GraphModule(root, g)


def test_the_rewrite_takes_either_operand_order_and_keeps_the_arguments():
    gm = _graph(swap=True)
    assert list(fuse_gated_mlp(gm).values()) == ["silu-mul-in-int8-gemm"]
    gm.graph.lint()
    (node,) = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert node.target is _OPS.int8_outlier_linear_silu_mul.default
    assert [a.target if isinstance(a, fx.Node) else a for a in node.args[1:]] == ["wq", "ws", "idx", None, None,
                                                                                    None, 8, 0]


@pytest.mark.parametrize("near_miss", [dict(extra_use=True), dict(up=(8, 15)), dict(up=(9, 17)),
                                       dict(act=_ATEN.gelu.default), dict(rows=24)],
                         ids=["gate-used-elsewhere", "halves-differ", "not-adjacent", "gelu", "w-has-more-rows"])
def test_near_misses_are_left_alone(near_miss):
    gm = _graph(**near_miss)
    before = _targets(gm)
    assert fuse_gated_mlp(gm) == {}
    assert _targets(gm) == before
