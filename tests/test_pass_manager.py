"""The pass manager: text pipelines, registration, analyses, verification, error wrapping."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler import ConfigError, GraphPass, PassError, PassResult, VerificationError, register_pass
from qcompiler.capture import CaptureMethod, capture_regions
from qcompiler.pass_manager import (Analysis, PassContext, PassManager, Program, Region, parse_pipeline,
                                    print_pipeline)
from qcompiler.schemes import pipeline_for


@pytest.mark.parametrize("scheme", ["int8-outlier", "int8-vectorwise", "int8-absmax"])
@pytest.mark.parametrize("calibrated", [True, False])
def test_scheme_pipelines_round_trip(scheme, calibrated):
    text = pipeline_for(scheme, calibrated=calibrated)
    passes = parse_pipeline(text)
    printed = print_pipeline(passes)
    assert parse_pipeline(printed) == passes  # print -> parse -> the same pipeline
    assert print_pipeline(parse_pipeline(printed)) == printed


def test_parse_reads_typed_options():
    (p,) = parse_pipeline("detect-outliers{threshold=4.5,mode=dynamic}")
    assert p.threshold == 4.5 and p.mode.value == "dynamic"
    (c,) = parse_pipeline("calibrate{max_batches=3,progress=false}")
    assert c.max_batches == 3 and c.progress is False


@pytest.mark.parametrize("text, words", [
    ("no-such-pass", "unknown pass 'no-such-pass'"),
    ("detect-outliers{treshold=6}", "unknown option 'treshold'"),
    ("detect-outliers{threshold=abc}", "cannot read 'abc' as float"),
    ("detect-outliers{threshold=-1}", "threshold must be a finite number"),
    ("detect-outliers{threshold=nan}", "threshold must be a finite number"),
    ("calibrate{progress=maybe}", "cannot read 'maybe' as bool"),
    ("dce,,dce", "cannot parse pipeline"),
])
def test_parse_errors_say_what(text, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        parse_pipeline(text)


def _program(model, x):
    plan = capture_regions(model, (x,), {}, CaptureMethod.EXPORT)
    return Program([Region(p, r) for p, r in plan.regions], plan.regions[0][1])


class _Counting(Analysis):
    calls = 0

    @classmethod
    def compute(cls, region, ctx, **params):
        cls.calls += 1
        return len(region.gm.graph.nodes)


@register_pass("test-use-analysis")
@dataclass(frozen=True)
class _UseAnalysis(GraphPass):
    modify: bool = False
    preserve: bool = False

    def run(self, gm, ctx):
        ctx.analysis(_Counting)
        return PassResult(gm, self.modify, frozenset({_Counting}) if self.preserve else frozenset())


def test_analyses_are_cached_and_invalidated():
    model = nn.Sequential(nn.Linear(8, 8))
    program = _program(model, torch.randn(2, 8))
    ctx = PassContext()
    _Counting.calls = 0
    PassManager("test-use-analysis,test-use-analysis").run(program, ctx)
    assert _Counting.calls == 1  # unmodified graph: the second pass hits the cache
    PassManager("test-use-analysis{modify=true,preserve=true},test-use-analysis").run(program, ctx)
    assert _Counting.calls == 1  # modified, but the pass said the analysis survives
    PassManager("test-use-analysis{modify=true},test-use-analysis").run(program, ctx)
    assert _Counting.calls == 2  # modified and not preserved: recomputed


@register_pass("test-explode")
@dataclass(frozen=True)
class _Explode(GraphPass):
    def run(self, gm, ctx):
        for node in gm.graph.nodes:
            if node.op == "call_function":
                with ctx.at(node):
                    raise RuntimeError("boom")
        return PassResult(gm, False)


def test_failures_name_pass_history_and_node():
    program = _program(nn.Sequential(nn.Linear(8, 8)), torch.randn(2, 8))
    with pytest.raises(PassError) as info:
        PassManager("canonicalize-linear,test-explode").run(program, PassContext())
    err = info.value
    assert err.pass_name == "test-explode" and err.history == ["canonicalize-linear"]
    assert err.node == "linear" and "boom" in str(err) and "passes run before: canonicalize-linear" in str(err)


@register_pass("test-orphan-observer")
@dataclass(frozen=True)
class _LeaveObserver(GraphPass):
    def run(self, gm, ctx):
        from qcompiler.passes.calibrate import ActivationObserver
        gm.add_submodule("_stray", ActivationObserver(["x"], 4))
        x = next(n for n in gm.graph.nodes if n.op == "placeholder")
        with gm.graph.inserting_after(x):
            gm.graph.call_module("_stray", (x,))
        return PassResult(gm, True)


def test_verifier_catches_orphan_observers():
    program = _program(nn.Sequential(nn.Linear(8, 8)), torch.randn(2, 8))
    with pytest.raises(PassError, match="observer was left") as info:
        PassManager("test-orphan-observer").run(program, PassContext(verify=True))
    assert isinstance(info.value.__cause__, VerificationError)
    # Without verification the same pipeline runs through: the verifier is what caught it.
    PassManager("test-orphan-observer").run(_program(nn.Sequential(nn.Linear(8, 8)), torch.randn(2, 8)),
                                             PassContext())


def test_register_pass_rejects_bad_names_and_types():
    with pytest.raises(ConfigError):
        register_pass("Bad_Name")
    with pytest.raises(ConfigError):
        register_pass("not-a-pass")(object)
    assert "decompose-matmul" in qcompiler.list_passes()
