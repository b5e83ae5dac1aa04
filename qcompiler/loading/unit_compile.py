"""Compile one unit of a model (a decoder block, the head) in place, on the calls it receives.

This is :func:`qcompiler.compile`'s middle (capture -> scheme pipeline -> lowering -> freeze)
applied to a submodule of a larger model: the unit's regions keep their full paths
(``model.layers.3.mlp``), so layer names, reports and saved files are those of a whole-model
compile. Nothing is copied: the unit's submodules are swapped for regions, and once the pipeline
has quantized them nothing refers to the float weights any more, except the returned ``ctx``
(the report's per-layer errors need them): drop it and they are freed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from qcompiler.backends import get_backend
from qcompiler.calibration import CalibrationSet
from qcompiler.capture import CaptureMethod, capture_regions
from qcompiler.errors import ConfigError, UnsupportedError
from qcompiler.pass_manager import PassContext, PassManager, Program, Region, parse_pipeline
from qcompiler.report import Report, build_report
from qcompiler.schemes import get_scheme
from qcompiler.graph.snapshot import snapshot_graph

__all__ = ["UnitPlan", "UnitResult", "compile_unit"]

Call = tuple[tuple, dict]


@dataclass(frozen=True)
class UnitPlan:
    """What every unit of one streamed compile shares: the scheme and how to run it."""

    scheme: str
    options: dict[str, Any]
    backend: str = "eager"
    capture: str = "export"
    calibrated: bool = True
    progress: bool = False
    verify: bool = False
    allow_fallback: bool = False

    def manager(self) -> PassManager:
        sch = get_scheme(self.scheme)
        config = sch.make_config(dict(self.options))
        be = get_backend(self.backend)
        if be.finalize is not None:
            raise ConfigError(f"backend {self.backend!r} runs the model outside PyTorch and cannot be streamed",
                              hint="stream with backend='eager' (or 'triton'), save, then export the loaded model")
        lowering = parse_pipeline(be.lowering) if be.lowering else []
        if self.allow_fallback:
            lowering = [dataclasses.replace(p, fallback=True) if "fallback" in {f.name for f in dataclasses.fields(p)}
                        else p for p in lowering]
        try:
            be.check()
        except UnsupportedError:
            if not self.allow_fallback:
                raise
        return PassManager(list(sch.passes(config, self.calibrated)) + lowering)


@dataclass
class UnitResult:
    root: nn.Module                      # the unit (or the region standing for it, if it captured whole)
    regions: list[Region]
    report: Report
    split: list[tuple[str, str]]
    not_called: list[str]
    before: dict[str, Any] = field(default_factory=dict)   # region label -> GraphSnapshot
    absmax: dict[str, Any] = field(default_factory=dict)   # layer -> max |x| per input feature
    trace: list = field(default_factory=list)


def _full(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix and path else (prefix or path)


def _meta_shell(gm, source: nn.Module):
    """A copy of a cached capture whose tensors are on ``meta``: later blocks rebind it to their
    own weights, and the first block's float weights (and its graph, which the passes are about
    to rewrite) are not kept alive by the cache."""
    import copy
    import warnings

    import torch

    memo = {}
    for t in source.state_dict(keep_vars=True).values():
        shell = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(shell, requires_grad=False) if isinstance(t, nn.Parameter) else shell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(gm, memo), copy.deepcopy(source, memo)


def compile_unit(unit: nn.Module, prefix: str, calls: list[Call], plan: UnitPlan,
                 manager: PassManager | None = None, cache: dict | None = None) -> UnitResult:
    """Quantizes ``unit`` (at ``prefix`` in the model) in place; ``calls`` are the (args, kwargs)
    it receives, the first used to capture it, all of them to calibrate when ``plan.calibrated``.
    ``cache``: captures shared with the other units (identical blocks are traced once)."""
    manager = manager or plan.manager()
    method = CaptureMethod.parse(plan.capture)
    known = set(cache) if cache is not None else set()
    captured = capture_regions(unit, *calls[0], method=method, cache=cache)
    for key in (set(cache) - known if cache is not None else ()):
        cache[key] = _meta_shell(*cache[key])
    root = unit
    if captured.regions and captured.regions[0][0] == "":
        root = captured.regions[0][1]
    regions = [Region(_full(prefix, path), region) for path, region in captured.regions]
    split = [(_full(prefix, p) if p != "<model>" else prefix, why) for p, why in captured.split]
    not_called = [_full(prefix, p) if p != "<model>" else prefix for p in captured.not_called]
    if not regions:
        return UnitResult(root, [], Report(plan.scheme, plan.backend, str(manager), [], [], split, 0, 0),
                          split, not_called)
    program = Program(regions, root)
    calib = CalibrationSet(list(calls)) if plan.calibrated else None
    ctx = PassContext(scheme=plan.scheme, backend=plan.backend, progress=False, calibration_data=calib,
                      verify=plan.verify)
    before = {r.label: snapshot_graph(r.gm, r.label) for r in regions}
    manager.run(program, ctx)
    for r in regions:
        r.module.freeze()
    report = build_report(program, ctx, scheme=plan.scheme, backend=plan.backend, pipeline=str(manager),
                          split=split, model_bytes_before=0)
    return UnitResult(root, regions, report, split, not_called, before, dict(ctx.state.absmax),
                      list(ctx.state.sequential_trace))
