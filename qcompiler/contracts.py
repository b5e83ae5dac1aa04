"""Pass contracts: what a pass needs of the program before it runs, and what it leaves behind.

A :class:`Fact` is one statement about the program ("linears annotated", "activations quantized
per row", "weights quantized"). Each pass declares a :class:`Contract`::

    detect-outliers{mode=static}:  requires  linears annotated, activations per row, calibrated
                                   forbids   weights quantized      (the split of W is decided here)
                                   ensures   outlier columns chosen

The pass manager walks a whole pipeline's contracts before any work (:func:`check_pipeline`), so
``annotate-linears{act=tensor},calibrate,detect-outliers,...`` is a :class:`ConfigError` naming
``detect-outliers`` and the per-row requirement, instead of a model that computes garbage. At run
time ``Pass.requires`` / ``Pass.ensures`` check the facts that can be read off a graph (every spec
per row, every annotated linear's weight stored, ...) on each region.

Facts of one ``group`` exclude each other: ensuring "activations per tensor" drops "activations
per row". A user pass may declare its own facts; a pass without a contract needs and promises
nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

import torch
from torch import fx

from qcompiler.errors import ConfigError
from qcompiler.spec import ActGranularity, LinearQuantSpec, OutlierMode, WeightFormat, get_spec

if TYPE_CHECKING:
    from qcompiler.pass_manager import Pass, PassContext

__all__ = ["Fact", "Contract", "check_pipeline", "apply_contract", "check_facts",
           "CALIBRATION_DATA", "LINEARS_ANNOTATED", "ACT_ROW", "ACT_TENSOR", "ACT_FLOAT", "ACT_INT8",
           "FORMAT_CHOSEN", "FORMAT_UINT", "FORMAT_NF4", "CALIBRATED", "OUTLIERS_DETECTED",
           "WEIGHTS_QUANTIZED", "DECOMPOSED", "LOWERED", "FAKE_QUANTIZED"]

_FACT_ORDER = itertools.count()  # facts in the order they are defined: the basic ones first

# (graph module, context) -> what contradicts the fact in this graph, or None if it holds
GraphCheck = Callable[[fx.GraphModule, "PassContext"], Optional[str]]


@dataclass(frozen=True)
class Fact:
    """A statement about the program. ``hint`` says how a pipeline makes it true; ``check``, where
    the graph shows it, finds what contradicts it at run time."""

    description: str
    hint: str
    group: str | None = None
    check: GraphCheck | None = field(default=None, compare=False)
    order: int = field(default_factory=lambda: next(_FACT_ORDER), compare=False, repr=False)  # messages list

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class Contract:
    """``requires``: facts that must hold before the pass; ``forbids``: facts that must not (it has
    to run before them); ``ensures``: facts it establishes; ``invalidates``: facts it ends."""

    requires: frozenset = frozenset()
    ensures: frozenset = frozenset()
    forbids: frozenset = frozenset()
    invalidates: frozenset = frozenset()

    def __init__(self, requires: Iterable[Fact] = (), ensures: Iterable[Fact] = (),
                 forbids: Iterable[Fact] = (), invalidates: Iterable[Fact] = ()):
        for name, value in (("requires", requires), ("ensures", ensures), ("forbids", forbids),
                            ("invalidates", invalidates)):
            object.__setattr__(self, name, frozenset(value))


# ----------------------------------------------------------------------- graph checks

def _specs(gm: fx.GraphModule):
    for node in gm.graph.nodes:
        spec = get_spec(node)
        if spec is not None:
            yield node, spec


def _every_spec(test: Callable[[LinearQuantSpec], bool], says: Callable[[LinearQuantSpec], str]) -> GraphCheck:
    def check(gm, ctx):
        bad = next((s for _, s in _specs(gm) if not test(s)), None)
        return None if bad is None else f"layer '{bad.layer}' {says(bad)}"
    return check


def _act(act: ActGranularity) -> GraphCheck:
    return _every_spec(lambda s: s.act is act, lambda s: f"has activations '{s.act.value}'")


def _has_calibration_data(gm, ctx):
    return None if ctx.calibration_data is not None else "no calibration data was given"


def _no_linear_left(gm, ctx):
    left = next((n for n, _ in _specs(gm) if n.op == "call_function" and n.target is torch.ops.aten.linear.default),
                None)
    return None if left is None else f"annotated linear '{left.name}' was not rewritten into quantized ops"


# ----------------------------------------------------------------------------- facts

CALIBRATION_DATA = Fact("calibration data", "give calibration_data=[...] (a few batches of real inputs) to compile",
                        check=_has_calibration_data)
LINEARS_ANNOTATED = Fact("linears annotated", "run annotate-linears{...} before it")
ACT_ROW = Fact("activations quantized per row",
               "annotate with annotate-linears{act=row}: only the per-row int8 path keeps outlier columns in float",
               group="act",
               check=_act(ActGranularity.ROW))
ACT_TENSOR = Fact("activations quantized per tensor", "annotate with annotate-linears{act=tensor}", group="act",
                  check=_act(ActGranularity.TENSOR))
ACT_FLOAT = Fact("activations kept in float", "annotate with annotate-linears{act=none}", group="act",
                 check=_act(ActGranularity.NONE))
ACT_INT8 = Fact("activations quantized to int8", "annotate with annotate-linears{act=row} or {act=tensor}",
                check=_every_spec(lambda s: s.act is not ActGranularity.NONE, lambda s: "keeps float activations"))
FORMAT_CHOSEN = Fact("a weight format for every layer",
                     "after annotate-linears{act=none} choose one with annotate-weight-format{format=uint|nf4}",
                     check=_every_spec(lambda s: not (s.act is ActGranularity.NONE and s.format is WeightFormat.INT8),
                                       lambda s: "keeps float activations but has no weight-only format"))
FORMAT_UINT = Fact("weights in the uint (weight-only) format", "annotate-weight-format{format=uint,...}",
                   group="format", check=_every_spec(lambda s: s.format is WeightFormat.UINT,
                                                     lambda s: f"has weight format '{s.format.value}'"))
FORMAT_NF4 = Fact("weights in the nf4 format", "annotate-weight-format{format=nf4,...}", group="format",
                  check=_every_spec(lambda s: s.format is WeightFormat.NF4,
                                    lambda s: f"has weight format '{s.format.value}'"))
CALIBRATED = Fact("activation statistics (calibrated)", "run calibrate before it (it needs calibration_data)")
OUTLIERS_DETECTED = Fact("outlier columns chosen", "run detect-outliers before it",
                         check=_every_spec(lambda s: s.act is not ActGranularity.ROW or s.outliers is not OutlierMode.NONE,
                                           lambda s: "has no outlier decision"))
WEIGHTS_QUANTIZED = Fact("weights quantized", "run quantize-weights before it",
                         check=_every_spec(lambda s: s.weights is not None, lambda s: "has no stored quantized weight"))
DECOMPOSED = Fact("linears decomposed into quantized ops", "run decompose-matmul before it", check=_no_linear_left)
LOWERED = Fact("lowered to a backend's kernels", "run a lowering pass (lower-triton) before it")
FAKE_QUANTIZED = Fact("fake quantization inserted (QAT)", "run insert-fake-quant before it")


# ---------------------------------------------------------------------- the checks

def apply_contract(facts: frozenset, contract: Contract) -> frozenset:
    """The facts after a pass with ``contract`` ran on a program where ``facts`` held."""
    groups = {f.group for f in contract.ensures if f.group is not None}
    kept = {f for f in facts if f not in contract.invalidates and (f.group is None or f.group not in groups)}
    return frozenset(kept | contract.ensures)


def check_pipeline(passes: Sequence["Pass"], facts: Iterable[Fact] = ()) -> frozenset:
    """Walks ``passes``' contracts from ``facts``; raises :class:`ConfigError` at the first pass
    whose requirement is unmet (naming the pass, the fact, and the pass that ended or excluded
    it); returns the facts that hold after the whole pipeline. No graph is touched."""
    now = frozenset(facts)
    by: dict[Fact, str] = {f: "the start" for f in now}  # who established each fact
    for i, p in enumerate(passes, 1):
        c = p.contract()
        here = f"pass {i} '{p}'"
        missing = sorted(c.requires - now, key=lambda f: f.order)
        if missing:
            fact = missing[0]
            rival = next((f for f in now if fact.group is not None and f.group == fact.group), None)
            why = (f", but {by[rival]} left {rival}" if rival is not None
                   else ", which no pass before it ensures" if i > 1 else ", and it is the first pass")
            more = "".join(f"; it also needs {f}" for f in missing[1:])
            raise ConfigError(f"{here} needs {fact}{why}{more}", hint="; ".join(f.hint for f in missing))
        for fact in sorted(c.forbids & now, key=lambda f: f.order):
            raise ConfigError(f"{here} must run before {fact}, but {by[fact]} did that",
                              hint=f"move '{p.name}' earlier in the pipeline")
        now = apply_contract(now, c)
        by.update({f: here for f in c.ensures})
    return now


def check_facts(facts: Iterable[Fact], gm: fx.GraphModule, ctx: "PassContext", what: str) -> None:
    """Run-time: raises :class:`ConfigError` if ``gm`` contradicts one of ``facts`` (``what``:
    "needs" or "promised")."""
    for fact in sorted(facts, key=lambda f: f.order):
        problem = fact.check(gm, ctx) if fact.check is not None else None
        if problem is not None:
            raise ConfigError(f"{what} {fact}, but {problem}", hint=fact.hint)
