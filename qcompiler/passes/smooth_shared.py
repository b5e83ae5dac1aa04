"""``smooth-shared``: SmoothQuant with one scale per shared activation, folded into its eager norm.

Runs before ``smooth``. For each activation several regions read (q/k/v read
``input_layernorm``'s output; the MLP region reads ``post_attention_layernorm``'s, see
:mod:`~qcompiler.passes.shared_inputs`) it computes, as llm-compressor does, one
``s = max|X|^alpha / max|W|^(1 - alpha)`` with ``max|W|`` over the column maxima of every linear
of the group, multiplies their weight columns by ``s`` and divides the producing norm's weight
(and bias) by ``s`` in the outer model. Nothing is inserted in any graph, so a compressed-tensors
export writes the norm as the float weight it now is. The linears' specs say
``smoothing="outer-norm"``; ``smooth`` then leaves them alone and handles the rest (folds inside
a region, e.g. ``up_proj``'s rows for ``down_proj``). ``o_proj``'s scale goes into ``v_proj``'s
output rows where :mod:`~qcompiler.passes.value_output_fold` finds that valid (no grouped-query
attention): ``smoothing="linear"``.

Before::

    h = input_layernorm(x)                # eager, weight w
    q_proj: aten.linear(%input, %wq)      # region; k_proj, v_proj alike

After::

    h = input_layernorm(x)                # weight w / s
    q_proj: aten.linear(%input, %wq * s)  # k_proj, v_proj: the same s
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qcompiler.contracts import ACT_INT8, CALIBRATED, LINEARS_ANNOTATED, WEIGHTS_QUANTIZED, Contract
from qcompiler.errors import ConfigError
from qcompiler.graph.nodes import linear_parts, resolve_weight
from qcompiler.pass_manager import PassContext, PassResult, Program, ProgramPass, register_pass
from qcompiler.passes.calibrate import ActivationStats, FeatureStats
from qcompiler.passes.norm_fold import divide_norm_output, norm_fold_problem
from qcompiler.passes.quantize_weights import buffer_base
from qcompiler.passes.scale_folding import scale_weight_columns
from qcompiler.passes.shared_inputs import find_shared_inputs
from qcompiler.passes.smooth import smoothing_factors
from qcompiler.passes.value_output_fold import divide_output_rows, find_value_output_pairs
from qcompiler.spec import get_spec, update_spec

__all__ = ["SmoothShared", "OUTER_NORM"]

OUTER_NORM = "outer-norm"  # spec.smoothing: 1/s went into a norm module outside the regions


@register_pass("smooth-shared")
@dataclass(frozen=True)
class SmoothShared(ProgramPass):
    alpha: float = 0.5

    def contract(self) -> Contract:
        return Contract(requires={LINEARS_ANNOTATED, ACT_INT8, CALIBRATED}, forbids={WEIGHTS_QUANTIZED})

    def __post_init__(self):
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0.0 <= a <= 1.0:
            raise ConfigError(f"smooth-shared: alpha must be a number in [0, 1], got {a!r}")

    def run_program(self, program: Program, ctx: PassContext) -> dict[str, PassResult]:
        calls = ctx.calibration_data.calls if ctx.calibration_data is not None else []
        pairs, no_pair = find_value_output_pairs(program, calls[0]) if calls else ([], {})  # on the float model
        shared = find_shared_inputs(program, calls[0]) if calls else None
        stats: dict[str, dict] = {}
        touched: set[str] = set()
        for layer, why in shared.rejected.items() if shared is not None else ():
            ctx.note(layer, f"smoothing not shared: {why}")
        for group in shared.groups if shared is not None else []:
            nodes = [(m.region, n) for m in group.members for n in m.region.gm.graph.nodes if n.name in m.linears]
            specs = [get_spec(n) for _, n in nodes]
            k = specs[0].in_features
            for region, _ in nodes:
                if region.path not in stats:
                    ctx.region = region
                    stats[region.path] = dict(ctx.analysis(ActivationStats))
            if any(n.name not in stats[r.path] for r, n in nodes):
                continue  # not reached by calibration: smooth says so
            problem = norm_fold_problem(group.module, group.producer, group.sample_input, k)
            if problem:
                for spec in specs:
                    ctx.note(spec.layer, f"smoothing not shared: {problem}")
                continue
            ctx.region = nodes[0][0]
            weights = [resolve_weight(r.gm, linear_parts(n)[1])[0] for r, n in nodes]
            w_absmax = torch.stack([w.detach().float().abs().amax(dim=0).cpu() for w in weights]).amax(dim=0)
            x_absmax = torch.stack([stats[r.path][n.name].absmax.float() for r, n in nodes]).amax(dim=0)
            s = smoothing_factors(x_absmax, w_absmax, self.alpha)
            divide_norm_output(group.module, s)
            layers = ", ".join(sp.layer.rsplit(".", 1)[-1] for sp in specs)
            for (region, n), spec in zip(nodes, specs):
                with ctx.at(n):
                    scale_weight_columns(region.gm, n, s.to(weights[0].device), buffer_base(spec) + "_smoothed")
                update_spec(n, smoothing=OUTER_NORM)
                ctx.note(spec.layer, f"smoothing shared by {layers}: 1/s folded into '{group.producer}'")
                st = stats[region.path][n.name]
                stats[region.path][n.name] = FeatureStats(st.absmax / s, st.rows, st.samples / s)
                if spec.layer in ctx.state.samples:
                    ctx.state.samples[spec.layer] = ctx.state.samples[spec.layer] / s
                touched.add(region.path)
        for layer, why in no_pair.items():
            ctx.note(layer, f"smoothing not folded into v_proj: {why}")
        for pair in pairs:
            o_lin = next(n for n in pair.o.gm.graph.nodes if n.name == pair.o_linear)
            ctx.region = pair.o
            st_o = stats.setdefault(pair.o.path, dict(ctx.analysis(ActivationStats)))
            if o_lin.name not in st_o:
                continue
            spec = get_spec(o_lin)
            w = resolve_weight(pair.o.gm, linear_parts(o_lin)[1])[0]
            s = smoothing_factors(st_o[o_lin.name].absmax, w.detach().float().abs().amax(dim=0).cpu(), self.alpha)
            with ctx.at(o_lin):
                divide_output_rows(pair.v, pair.v_linear, s, buffer_base(spec) + "_smooth_v")
                scale_weight_columns(pair.o.gm, o_lin, s.to(w.device), buffer_base(spec) + "_smoothed")
            update_spec(o_lin, smoothing="linear")
            ctx.note(spec.layer, f"smoothing: 1/s folded into the rows of '{pair.v.path}' (v -> o)")
            st = st_o[o_lin.name]
            st_o[o_lin.name] = FeatureStats(st.absmax / s, st.rows, st.samples / s)
            if spec.layer in ctx.state.samples:
                ctx.state.samples[spec.layer] = ctx.state.samples[spec.layer] / s
            touched.update({pair.o.path, pair.v.path})
        for region in program.regions:
            if region.path in stats:
                ctx.analyses.put(ActivationStats, region, stats[region.path])
        ctx.region = None
        return {r.path: PassResult(r.gm, r.path in touched, preserved=frozenset({ActivationStats}))
                for r in program.regions}
