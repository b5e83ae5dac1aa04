"""Bug #9.5: pass contracts. An impossible pipeline is a ConfigError naming the pass and the unmet
requirement before any work; at run time ``requires``/``ensures`` check what a graph shows."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.backends import get_backend
from qcompiler.capture import CaptureMethod, capture_regions
from qcompiler.contracts import (ACT_ROW, ACT_TENSOR, CALIBRATION_DATA, DECOMPOSED, LINEARS_ANNOTATED,
                                 WEIGHTS_QUANTIZED, Contract, Fact, apply_contract)
from qcompiler.errors import ConfigError, PassError
from qcompiler.pass_manager import (GraphPass, PassContext, PassManager, PassResult, Program, Region,
                                    register_pass)
from qcompiler.spec import ActGranularity, get_spec, update_spec


class _Counting(nn.Module):
    """Counts forwards: a pipeline refused up front never runs the model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 32)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.b(torch.relu(self.a(x)))


def _data():
    x = torch.randn(16, 64)
    x[:, [3, 9]] *= 30  # outlier columns, so detect-outliers has something to find
    return [x, torch.randn(16, 64)]


# The issue's pipeline: per-tensor X cannot take the fp outlier path (rel. error 0.98 before).
IMPOSSIBLE = ("canonicalize-linear,annotate-linears{act=tensor},calibrate,detect-outliers,"
              "quantize-weights,decompose-matmul,share-activation-quant,dce")


@pytest.mark.parametrize("tail", ["", ",dce"])
def test_issue_pipeline_is_refused_before_any_work(tail):
    model = _Counting()
    with pytest.raises(ConfigError) as e:
        qcompiler.compile(model, "int8-outlier", _data(), pipeline=IMPOSSIBLE + tail, progress=False)
    msg = str(e.value)
    assert "pass 4 'detect-outliers" in msg and "activations quantized per row" in msg
    assert "annotate-linears{act=tensor" in msg and "act=row" in e.value.hint
    assert model.calls == 0


@pytest.mark.parametrize("pipeline, calibrated, words", [
    ("canonicalize-linear,annotate-linears,calibrate,quantize-weights,detect-outliers,decompose-matmul",
     True, "pass 5 'detect-outliers{threshold=6.0,mode=static}' must run before weights quantized, but pass 4 "
           "'quantize-weights' did that"),
    ("canonicalize-linear,annotate-linears,decompose-matmul", True,
     "pass 3 'decompose-matmul' needs weights quantized, which no pass before it ensures"),
    ("canonicalize-linear,annotate-linears,calibrate,quantize-weights,decompose-matmul", False,
     "pass 3 'calibrate{max_batches=0,max_samples=256,progress=true}' needs calibration data"),
    ("canonicalize-linear,annotate-linears,detect-outliers,quantize-weights,decompose-matmul", True,
     "needs activation statistics (calibrated)"),
    ("canonicalize-linear,annotate-linears{act=none},quantize-weights,decompose-matmul", True,
     "pass 3 'quantize-weights' needs a weight format for every layer"),
    ("canonicalize-linear,annotate-linears,gptq,quantize-weights,decompose-matmul", True,
     "needs weights in the uint (weight-only) format"),
    ("canonicalize-linear,annotate-linears{act=none},annotate-weight-format,smooth,quantize-weights", True,
     "needs activation statistics"),
    ("canonicalize-linear,annotate-linears,quantize-weights,lower-triton,decompose-matmul", True,
     "pass 4 'lower-triton{fallback=false,act_quant=auto}' needs linears decomposed into quantized ops"),
    ("quantize-weights", True, "needs linears annotated, and it is the first pass"),
    ("canonicalize-linear,annotate-linears,quantize-weights,decompose-matmul,calibrate", True,
     "'calibrate{max_batches=0,max_samples=256,progress=true}' must run before linears decomposed"),
])
def test_other_impossible_pipelines(pipeline, calibrated, words):
    model = _Counting()
    data = _data()
    with pytest.raises(ConfigError) as e:
        qcompiler.compile(model, "int8-vectorwise", data if calibrated else None, example_inputs=data[0],
                          pipeline=pipeline, progress=False)
    assert words in str(e.value)
    assert model.calls == 0


def _built_in_pipelines():
    for scheme in qcompiler.list_schemes():
        for calibrated in (True, False):
            try:
                text = qcompiler.pipeline_for(scheme, calibrated=calibrated)
            except ConfigError:  # the scheme needs calibration data: its own, clear error
                continue
            for backend in ("eager", "triton", "onnxruntime"):
                yield scheme, calibrated, backend, text


@pytest.mark.parametrize("scheme, calibrated, backend, text", list(_built_in_pipelines()))
def test_every_built_in_pipeline_validates(scheme, calibrated, backend, text):
    lowering = get_backend(backend).lowering
    manager = PassManager(text + ("," + lowering if lowering else ""))
    facts = manager.check({CALIBRATION_DATA} if calibrated else ())
    assert WEIGHTS_QUANTIZED in facts and DECOMPOSED in facts


def test_qat_pipelines_validate():
    from qcompiler.qat import _qat_pipeline
    for scheme in qcompiler.list_schemes():
        sch = qcompiler.schemes.get_scheme(scheme)
        PassManager(_qat_pipeline(scheme, sch.make_config({}))).check()


@register_pass("test-first-layer-per-tensor")
@dataclass(frozen=True)
class _FirstLayerPerTensor(GraphPass):
    """A user pass without a contract that breaks what annotate-linears{act=row} promised."""

    def run(self, gm, ctx):
        node = next(n for n in gm.graph.nodes if get_spec(n) is not None)
        update_spec(node, act=ActGranularity.TENSOR)
        return PassResult(gm, modified=False, preserved=PassResult.ALL)


def test_run_time_requires_checks_the_graph():
    text = IMPOSSIBLE.replace("{act=tensor}", "{act=row}").replace("calibrate,", "test-first-layer-per-tensor,calibrate,")
    with pytest.raises(PassError) as e:
        qcompiler.compile(_Counting(), "int8-outlier", _data(), pipeline=text, progress=False)
    assert e.value.pass_name == "detect-outliers"
    assert "needs activations quantized per row, but layer 'a' has activations 'tensor'" in str(e.value)


def _program(model, x):
    plan = capture_regions(model, (x,), {}, CaptureMethod.EXPORT)
    return Program([Region(p, r) for p, r in plan.regions], plan.regions[0][1])


def test_facts_carry_over_between_runs_on_one_program():
    model, data = _Counting(), _data()
    program = _program(model, data[0])
    ctx = PassContext(options={"progress": False})
    with pytest.raises(ConfigError, match="needs linears annotated"):
        PassManager("quantize-weights").run(program, ctx)
    PassManager("canonicalize-linear,annotate-linears").run(program, ctx)
    assert {LINEARS_ANNOTATED, ACT_ROW} <= program.facts
    PassManager("quantize-weights,decompose-matmul").run(program, ctx)  # step by step, as tests do
    assert DECOMPOSED in program.facts


_GREEN = Fact("test: weights painted green", "run test-paint first")


@register_pass("test-paint")
@dataclass(frozen=True)
class _Paint(GraphPass):
    def contract(self):
        return Contract(ensures={_GREEN})

    def run(self, gm, ctx):
        return PassResult(gm, modified=False, preserved=PassResult.ALL)


@register_pass("test-needs-paint")
@dataclass(frozen=True)
class _NeedsPaint(_Paint):
    def contract(self):
        return Contract(requires={_GREEN})


def test_user_facts():
    with pytest.raises(ConfigError, match="pass 1 'test-needs-paint' needs test: weights painted green") as e:
        PassManager("test-needs-paint,test-paint").check()
    assert e.value.hint == "run test-paint first"
    assert _GREEN in PassManager("test-paint,test-needs-paint").check()


def test_facts_of_a_group_exclude_each_other():
    facts = apply_contract(frozenset({ACT_ROW, LINEARS_ANNOTATED}), Contract(ensures={ACT_TENSOR}))
    assert facts == {ACT_TENSOR, LINEARS_ANNOTATED}
