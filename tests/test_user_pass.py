"""A pass registered from outside the package runs inside qcompiler.compile."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import qcompiler
from qcompiler import GraphPass, PassResult, register_pass
from qcompiler.spec import SPEC_KEY, get_spec

ROOT = Path(__file__).resolve().parents[1]


@register_pass("test-skip-narrow")
@dataclass(frozen=True)
class SkipNarrow(GraphPass):
    min_features: int = 32

    def run(self, gm, ctx):
        for node in gm.graph.nodes:
            spec = get_spec(node)
            if spec is not None and spec.in_features < self.min_features:
                ctx.note(spec.layer, f"kept in float by {self.name}")
                del node.meta[SPEC_KEY]
        return PassResult(gm, modified=False, preserved=PassResult.ALL)


def test_user_pass_runs_inside_compile():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
    text = qcompiler.pipeline_for("int8-vectorwise").replace("calibrate", "test-skip-narrow{min_features=32},calibrate")
    qm = qcompiler.compile(model, "int8-vectorwise", [torch.randn(4, 16)], pipeline=text, progress=False)
    ops = [r.op for r in qm.report().layers]
    assert ops[0] == "float" and ops[1].startswith("int8")
    assert qm.report().layers[0].notes == ["kept in float by test-skip-narrow"]
    assert "test-skip-narrow{min_features=32}" in qm.report().pipeline
    # The float layer really is float: its aten.linear is still in the graph.
    (gm,) = qm.graph_modules.values()
    assert sum(n.target is torch.ops.aten.linear.default for n in gm.graph.nodes) == 1


def test_custom_pass_example_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_pass.py")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kept in float by pass 'keep-edges-float'" in out.stdout
