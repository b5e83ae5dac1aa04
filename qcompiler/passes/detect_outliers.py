"""``detect-outliers``: the input feature dims of each linear whose calibrated max |x| exceeds
``threshold`` (LLM.int8()'s outlier features), written into the linear's spec.

With ``mode=dynamic`` no statistics are needed: the spec says to find the columns on every
forward from the actual input, as bitsandbytes does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from qcompiler.errors import ConfigError
from qcompiler.contracts import ACT_ROW, CALIBRATED, LINEARS_ANNOTATED, OUTLIERS_DETECTED, WEIGHTS_QUANTIZED, Contract
from qcompiler.pass_manager import Analysis, GraphPass, PassContext, PassResult, Region, register_pass
from qcompiler.graph.nodes import is_linear
from qcompiler.passes.calibrate import ActivationStats
from qcompiler.spec import OutlierMode, get_spec, update_spec

__all__ = ["DetectOutliers", "OutlierAnalysis"]


class OutlierAnalysis(Analysis):
    """``{linear node name: tuple of outlier feature dims}`` at a given threshold."""

    @classmethod
    def compute(cls, region: Region, ctx: PassContext, threshold: float = 6.0):
        stats = ctx.analyses.get(ActivationStats, region, ctx)
        return {name: tuple(int(i) for i in torch.nonzero(s.absmax > threshold).flatten())
                for name, s in stats.items()}


@register_pass("detect-outliers")
@dataclass(frozen=True)
class DetectOutliers(GraphPass):
    threshold: float = 6.0
    mode: OutlierMode = OutlierMode.STATIC

    def contract(self) -> Contract:
        # only the per-row int8 path multiplies outlier columns in float; quantize-weights splits W by them
        stats = {CALIBRATED} if self.mode is OutlierMode.STATIC else set()
        return Contract(requires={LINEARS_ANNOTATED, ACT_ROW, *stats}, ensures={OUTLIERS_DETECTED},
                        forbids={WEIGHTS_QUANTIZED})

    def __post_init__(self):
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold >= 0):
            raise ConfigError(f"detect-outliers: threshold must be a finite number >= 0, got {self.threshold!r}")
        if self.mode is OutlierMode.NONE:
            raise ConfigError("detect-outliers: mode must be 'static' or 'dynamic'")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        outliers = ctx.analysis(OutlierAnalysis, threshold=self.threshold) \
            if self.mode is OutlierMode.STATIC else {}
        for node in gm.graph.nodes:
            if not (is_linear(node) and get_spec(node) is not None):
                continue
            with ctx.at(node):
                spec = get_spec(node)
                if self.threshold == 0:
                    ctx.note(spec.layer, "threshold 0: every nonzero input column is an outlier, so the layer "
                                         "computes in float (no int8 saving)")
                elif len(outliers.get(node.name, ())) == spec.in_features:
                    ctx.note(spec.layer, f"all {spec.in_features} input columns exceed threshold {self.threshold:g}: "
                                         "the layer computes in float")
                if self.mode is OutlierMode.DYNAMIC:
                    update_spec(node, outliers=OutlierMode.DYNAMIC, threshold=self.threshold)
                elif node.name in outliers:
                    update_spec(node, outliers=OutlierMode.STATIC, threshold=self.threshold,
                                outlier_idx=outliers[node.name])
                else:
                    ctx.note(get_spec(node).layer, "not reached by calibration data: no outlier columns")
                    update_spec(node, outliers=OutlierMode.STATIC, threshold=self.threshold, outlier_idx=())
        return PassResult(gm, modified=False, preserved=PassResult.ALL)
