"""``calibrate``: run the calibration data through the whole model with observers on every
annotated linear's input; record per-feature max |x| (and a sample of rows for the report).

Observers are identity ``call_module`` nodes inserted before the linears and removed before the
pass returns, so no later pass ever sees one. The result is the :class:`ActivationStats` analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from qcompiler.errors import CalibrationError, QCompilerError
from qcompiler.contracts import CALIBRATED, CALIBRATION_DATA, DECOMPOSED, LINEARS_ANNOTATED, Contract
from qcompiler.pass_manager import Analysis, PassContext, PassResult, Program, ProgramPass, Region, register_pass
from qcompiler.graph.nodes import is_linear, linear_parts
from qcompiler.graph.observer import ActivationObserver, FeatureStats
from qcompiler.spec import get_spec

__all__ = ["Calibrate", "ActivationObserver", "ActivationStats", "FeatureStats"]

class ActivationStats(Analysis):
    """``{linear node name: FeatureStats}`` for one region; produced by the calibrate pass."""

    @classmethod
    def compute(cls, region: Region, ctx: PassContext, **params):
        raise QCompilerError(f"no activation statistics for region '{region.label}'",
                             hint="run the 'calibrate' pass first (give calibration_data to compile)")


@register_pass("calibrate")
@dataclass(frozen=True)
class Calibrate(ProgramPass):
    max_batches: int = 0       # 0: all of the calibration data
    max_samples: int = 256     # rows kept per layer for the report's error estimate
    progress: bool = True

    def contract(self) -> Contract:
        # observes the annotated aten.linear nodes: after decompose-matmul there are none left
        return Contract(requires={LINEARS_ANNOTATED, CALIBRATION_DATA}, ensures={CALIBRATED}, forbids={DECOMPOSED})


    def run_program(self, program: Program, ctx: PassContext) -> dict[str, PassResult]:
        inserted = {r.path: self._insert_observers(r, ctx) for r in program.regions}
        try:
            self._run_data(program.root, ctx)
        finally:
            for r in program.regions:
                self._remove_observers(r.gm, inserted[r.path])
        samples = ctx.state.samples
        absmax = ctx.state.absmax
        for r in program.regions:
            stats = {lin: obs.stats() for obs, lins in inserted[r.path] for lin in lins if obs.absmax is not None}
            ctx.analyses.put(ActivationStats, r, stats)
            for node in r.gm.graph.nodes:
                if node.name in stats and get_spec(node) is not None:
                    samples[get_spec(node).layer] = stats[node.name].samples
                    absmax[get_spec(node).layer] = stats[node.name].absmax
        return {r.path: PassResult(r.gm, modified=bool(inserted[r.path]), preserved=frozenset({ActivationStats}))
                for r in program.regions}

    def _insert_observers(self, region: Region, ctx: PassContext) -> list[tuple[ActivationObserver, list[str]]]:
        gm, by_input = region.gm, {}
        for node in gm.graph.nodes:
            if is_linear(node) and get_spec(node) is not None:
                by_input.setdefault(linear_parts(node)[0], []).append(node)
        out = []
        for i, (x, linears) in enumerate(by_input.items()):
            obs = ActivationObserver([get_spec(n).layer for n in linears], self.max_samples)
            name = f"_qc_observer_{i}"
            gm.add_submodule(name, obs)
            with gm.graph.inserting_after(x):
                obs_node = gm.graph.call_module(name, (x,))
            for n in linears:
                n.replace_input_with(x, obs_node)
            out.append((obs, [n.name for n in linears]))
        gm.recompile()
        return out

    @staticmethod
    def _remove_observers(gm: fx.GraphModule, inserted) -> None:
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ActivationObserver):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                gm.delete_submodule(node.target)
        gm.recompile()

    def _run_data(self, root: nn.Module, ctx: PassContext) -> None:
        calls = ctx.calibration_data.calls
        if self.max_batches:
            calls = calls[: self.max_batches]
        bar = tqdm(calls, desc="calibrating", unit="batch", disable=not (self.progress and ctx.progress), leave=False)
        with torch.no_grad():
            for i, (args, kwargs) in enumerate(bar):
                try:
                    root(*args, **kwargs)
                except QCompilerError:
                    raise
                except Exception as e:  # noqa: BLE001 - the user's data or model; say which item
                    raise CalibrationError(f"calibration item {i} failed in the model: {type(e).__name__}: {e}",
                                           hint="every item must be a valid input of the model "
                                                "(same structure as example_inputs)") from e
