"""``smooth``: SmoothQuant (Xiao et al., 2023) - move activation outliers into the weights.

For each group of annotated linears reading the same x (q/k/v, gate/up), with calibrated
``max|X_j|`` per input channel and ``max|W_j|`` over the group's weight columns::

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)        (alpha = 0.5 by default)
    y = (x / s) @ (W * s).T + b                        (the same function, in exact arithmetic)

``x / s`` has much flatter channels, so its per-row int8 quantization loses less; ``W * s`` is
only a little harder to quantize per output channel. Channels that calibration never saw active
(or whose weight column is all zero) keep ``s_j = 1``.

Where ``1 / s`` goes is decided by :class:`~qcompiler.passes.scale_folding.ScaleFoldAnalysis`:
into the affine weight (+ bias) of a preceding LayerNorm, the weight of a decomposed RMSNorm, or
the rows of a preceding linear when nothing else reads the tensor; otherwise an explicit
``x * (1 / s)`` is inserted and the layer's spec says why (``smoothing="mul"`` and a note).

Before (pre-LN block)::

    %ln = aten.layer_norm(%h, [K], %ln_w, %ln_b, eps)
    %q = aten.linear(%ln, %wq, %bq);  %k = aten.linear(%ln, %wk, %bk)

After::

    %ln = aten.layer_norm(%h, [K], %ln_w_div_s, %ln_b_div_s, eps)
    %q = aten.linear(%ln, %wq_times_s, %bq);  %k = aten.linear(%ln, %wk_times_s, %bk)

The calibration statistics and the report's sample rows are divided by s too, so later passes
(and the report's per-layer error) see what the linears now read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import fx

from qcompiler.errors import ConfigError
from qcompiler.contracts import ACT_INT8, CALIBRATED, LINEARS_ANNOTATED, WEIGHTS_QUANTIZED, Contract
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import linear_parts, resolve_weight
from qcompiler.passes.calibrate import ActivationStats, FeatureStats
from qcompiler.passes.quantize_weights import buffer_base
from qcompiler.passes.scale_folding import (FoldKind, ScaleFoldAnalysis, divide_input, linear_groups,
                                            scale_weight_columns)
from qcompiler.spec import get_spec, update_spec

__all__ = ["Smooth", "smoothing_factors"]

_EPS = 1e-5


def smoothing_factors(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = max|X|^alpha / max|W|^(1-alpha)`` per input channel, float32; 1 where either is 0."""
    ax, aw = act_absmax.float(), weight_absmax.float()
    s = ax.clamp_min(_EPS).pow(alpha) / aw.clamp_min(_EPS).pow(1.0 - alpha)
    return torch.where((ax > 0) & (aw > 0), s.clamp(_EPS, 1.0 / _EPS), torch.ones_like(s))


@register_pass("smooth")
@dataclass(frozen=True)
class Smooth(GraphPass):
    alpha: float = 0.5
    fold: bool = True   # false: always an explicit mul (for debugging and comparisons)
    unfoldable: str = "mul"  # where nothing can absorb 1/s: "mul" (explicit x * (1/s)) or "skip" (not smoothed)

    def contract(self) -> Contract:
        # rescales the float weights: after quantize-weights that would change nothing that runs
        return Contract(requires={LINEARS_ANNOTATED, ACT_INT8, CALIBRATED}, forbids={WEIGHTS_QUANTIZED})

    def __post_init__(self):
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0.0 <= a <= 1.0:
            raise ConfigError(f"smooth: alpha must be a number in [0, 1], got {a!r}",
                              hint="0.5 balances activations and weights; larger moves more into the weights")
        if self.unfoldable not in ("mul", "skip"):
            raise ConfigError(f"smooth: unfoldable must be 'mul' or 'skip', got {self.unfoldable!r}")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        stats = dict(ctx.analysis(ActivationStats))
        folds = ctx.analysis(ScaleFoldAnalysis, fold=self.fold)
        samples = ctx.state.samples
        modified = False
        for x, linears in linear_groups(gm).items():
            first = linears[0]
            if all(get_spec(n).smoothing is not None for n in linears):
                continue  # smoothed already (smooth-shared folded its 1/s into a norm outside the region)
            with ctx.at(first):
                if first.name not in stats:
                    for n in linears:
                        ctx.note(get_spec(n).layer, "not smoothed: not reached by calibration data")
                    continue
                weights = [resolve_weight(gm, linear_parts(n)[1])[0] for n in linears]
                w_absmax = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)
                s = smoothing_factors(stats[first.name].absmax, w_absmax.cpu(), self.alpha)
                s_dev = s.to(weights[0].device)
                fold = folds[x.name]
                if fold.kind is FoldKind.MUL and self.unfoldable == "skip":
                    for n in linears:
                        ctx.note(get_spec(n).layer, f"not smoothed: nothing absorbs 1/s ({fold.reason}); "
                                                    f"smooth='all' would insert an explicit x * (1/s)")
                    continue
                divide_input(gm, fold, x, linears, s_dev, buffer_base(get_spec(first)) + "_smooth")
                for n in linears:
                    spec = get_spec(n)
                    scale_weight_columns(gm, n, s_dev, buffer_base(spec) + "_smoothed")
                    notes = spec.notes + ((f"smoothing not folded ({fold.reason}): explicit x * (1/s)",)
                                          if fold.kind is FoldKind.MUL else ())
                    update_spec(n, smoothing=fold.kind.value, notes=notes)
                    st = stats[n.name]
                    stats[n.name] = FeatureStats(st.absmax / s, st.rows, st.samples / s)
                    if spec.layer in samples:
                        samples[spec.layer] = samples[spec.layer] / s
                modified = True
        ctx.analyses.put(ActivationStats, ctx.region, stats)
        return PassResult(gm, modified, preserved=frozenset({ActivationStats}))
