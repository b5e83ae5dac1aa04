"""``awq``: activation-aware scaling (and clipping) of weight-only linears, region by region.

Runs after ``annotate-weight-format{format=uint,...}`` and before ``quantize-weights``, which
then rounds the rescaled weights to nearest. For each region (one on ``device`` at a time, in
execution order; see ``sequential_calibrate``), the calibration calls run through it once and a
sample of the rows each group of linears reads (gate/up together) is kept. Linears of several
regions that read one eager norm's output (q/k/v of a Hugging Face Llama, each its own region;
see :mod:`~qcompiler.passes.shared_inputs`) are one group, searched when its first region is
reached, as llm-compressor's mappings do. Then, per group:

1. :func:`qcompiler.quant.awq.awq_search_scales` picks ``s = mean|x|^alpha`` minimizing the
   group's output error after quantization;
2. the columns of each weight are multiplied by ``s`` and, with ``clip``, each (row, group) range
   is shrunk where that lowers the output error (:func:`~qcompiler.quant.awq.awq_clip`);
3. the input is divided by ``s``: a shared group's norm module outside the regions absorbs it
   (its weight, and bias, ``/= s``: ``smoothing="outer-norm"``); else where the scale-folding
   analysis (``scale_folding``) finds an op in the region to absorb it - a LayerNorm/RMSNorm
   weight, or the rows of a previous linear; else, with ``unfoldable=mul``, an explicit
   ``mul``, and with ``unfoldable=skip`` the group is not searched (``s = 1``, clipping only).
   The report says which.

The float function of the region does not change (up to rounding), so the search of every group
uses the float activations, as the reference implementation does.

Before (Llama MLP region, RMSNorm outside the region)::

    h = post_attention_layernorm(x)                  # eager, weight w
    %up = aten.linear(%h, %w_up)   ...   %down = aten.linear(%mul, %w_down)

After::

    h = post_attention_layernorm(x)                  # weight w / s
    %up = aten.linear(%h, %w_up * s)  ...            # rows of w_up also absorb down's 1/s'
    %down = aten.linear(%mul, %w_down * s')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from qcompiler.errors import ConfigError
from qcompiler.contracts import CALIBRATION_DATA, FORMAT_UINT, LINEARS_ANNOTATED, WEIGHTS_QUANTIZED, Contract
from qcompiler.pass_manager import PassContext, PassResult, Program, ProgramPass, Region, register_pass
from qcompiler.graph.nodes import linear_parts, resolve_weight
from qcompiler.graph.rebind import set_linear_weight
from qcompiler.passes.gptq import RowSampler, pending_uint
from qcompiler.passes.layer_inputs import linear_groups_in_order, tap_inputs
from qcompiler.passes.quantize_weights import buffer_base
from qcompiler.passes.norm_fold import divide_norm_output, norm_fold_problem
from qcompiler.passes.scale_folding import FoldKind, divide_input, find_scale_fold
from qcompiler.passes.shared_inputs import SharedInput, SharedInputs, find_shared_inputs
from qcompiler.passes.smooth_shared import OUTER_NORM
from qcompiler.passes.value_output_fold import ValueOutputPair, divide_output_rows, find_value_output_pairs
from qcompiler.passes.sequential_calibrate import run_sequential
from qcompiler.quant.awq import awq_clip, awq_search_scales, rows_sample
from qcompiler.spec import get_spec, update_spec

__all__ = ["AWQ"]


@register_pass("awq")
@dataclass(frozen=True)
class AWQ(ProgramPass):
    n_grid: int = 20           # alpha in {0, 1/n_grid, ..., (n_grid-1)/n_grid}
    clip: bool = True          # search a range-shrinking ratio per (row, group) after scaling
    fold: bool = True          # fold 1/s into the previous op where the graph allows (else a mul)
    unfoldable: str = "mul"    # where nothing absorbs 1/s: "mul" (explicit x * (1/s)) or "skip" (no scale search)
    max_rows: int = 1024       # calibration rows per group used by the search
    device: str | None = None  # where each region is processed (one at a time); None: where it is
    max_samples: int = 256     # rows kept per layer for the report's error estimate
    progress: bool = True      # show a bar when the compile shows progress

    def contract(self) -> Contract:
        return Contract(requires={LINEARS_ANNOTATED, FORMAT_UINT, CALIBRATION_DATA}, forbids={WEIGHTS_QUANTIZED})

    def __post_init__(self):
        if isinstance(self.n_grid, bool) or not isinstance(self.n_grid, int) or self.n_grid < 1:
            raise ConfigError(f"awq: n_grid must be an int >= 1, got {self.n_grid!r}")
        if self.device in ("none", "None"):  # the text form of None (print_pipeline writes "None")
            object.__setattr__(self, "device", None)
        if self.unfoldable not in ("mul", "skip"):
            raise ConfigError(f"awq: unfoldable must be 'mul' or 'skip', got {self.unfoldable!r}")
        if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 1:
            raise ConfigError(f"awq: max_rows must be an int >= 1, got {self.max_rows!r}")


    def run_program(self, program: Program, ctx: PassContext) -> dict[str, PassResult]:
        touched: set[str] = set()
        calls = ctx.calibration_data.calls if ctx.calibration_data is not None else []
        pairs, no_pair = find_value_output_pairs(program, calls[0]) if self.fold and calls else ([], {})
        shared = find_shared_inputs(program, calls[0]) if self.fold and calls else SharedInputs()
        for layer, why in no_pair.items():
            ctx.note(layer, f"awq: scale not folded into v_proj: {why}")
        by_o = {p.o.path: p for p in pairs}
        done: set[int] = set()  # id() of the shared inputs already searched (with their first region)
        for layer, why in shared.rejected.items():
            ctx.note(layer, f"awq: scale not shared: {why}")
        unreached = run_sequential(program, ctx, lambda r, c: self._region(r, c, ctx, touched, shared, done, by_o.get(r.path)),
                                   device=self.device, what="awq", progress=self.progress and ctx.progress)
        for path in unreached:
            ctx.note(path or "<model>", "awq: not reached by the calibration data; plain round-to-nearest")
        return {r.path: PassResult(r.gm, modified=r.path in touched) for r in program.regions}

    def _region(self, region: Region, calls, ctx: PassContext, touched: set[str], shared: SharedInputs,
                done: set[int], pair: ValueOutputPair | None) -> None:
        gm = region.gm
        groups = []
        for x, linears in linear_groups_in_order(gm, pending_uint):
            g = shared.of(region, x.name) if x.op == "placeholder" else None
            if g is None or id(g) not in done:
                groups.append((x, linears, g))
        rows = [RowSampler(self.max_rows, len(calls)) for _ in groups]
        tap_inputs(region, calls, [(x, lins, r.add) for (x, lins, _), r in zip(groups, rows)])
        for (x, linears, g), sampler in zip(groups, rows):
            spec = get_spec(linears[0])
            xs = sampler.tensor(spec.in_features)
            if xs.shape[0] == 0:
                for lin in linears:
                    ctx.note(get_spec(lin).layer, "awq: no calibration rows reached it; plain round-to-nearest")
                continue
            ctx.region = region
            with ctx.at(linears[0]):
                if g is not None and self._shared(g, xs, ctx, touched):
                    done.add(id(g))
                    continue
                if pair is not None and [n.name for n in linears] == [pair.o_linear]:  # v -> o
                    base = buffer_base(spec) + "_awq_v"
                    self._apply([(region, linears[0])], xs, ctx, True, "linear", f"the rows of '{pair.v.path}' (v -> o)",
                                lambda s: divide_output_rows(pair.v, pair.v_linear, s, base))
                    touched.update({region.path, pair.v.path})
                    continue
                self._local(region, x, linears, xs, ctx)
            touched.add(region.path)

    def _shared(self, g: SharedInput, xs: torch.Tensor, ctx: PassContext, touched: set[str]) -> bool:
        """One search for every linear reading ``g``'s tensor (q/k/v in three regions), 1/s folded
        into the norm that produced it; False (nothing done) when that norm cannot absorb it."""
        nodes = [(m.region, n) for m in g.members for n in m.region.gm.graph.nodes if n.name in m.linears]
        specs = {(sp.bits, sp.group_size, sp.symmetric) for sp in (get_spec(n) for _, n in nodes)}
        if not all(pending_uint(n) for _, n in nodes) or len(specs) != 1:
            return False
        problem = norm_fold_problem(g.module, g.producer, g.sample_input, get_spec(nodes[0][1]).in_features)
        if problem:
            for _, n in nodes:
                ctx.note(get_spec(n).layer, f"awq: scale not shared: {problem}")
            return False
        names = ", ".join(get_spec(n).layer.rsplit(".", 1)[-1] for _, n in nodes)
        self._apply(nodes, xs, ctx, True, OUTER_NORM, f"'{g.producer}' (shared by {names})",
                    lambda s: divide_norm_output(g.module, s))
        touched.update(r.path for r, _ in nodes)
        return True

    def _local(self, region: Region, x: fx.Node, linears: list[fx.Node], xs: torch.Tensor, ctx: PassContext) -> None:
        gm = region.gm
        fold = find_scale_fold(gm, x, linears, self.fold)
        search = fold.kind is not FoldKind.MUL or self.unfoldable == "mul"
        where = fold.kind.value + (f" ({fold.reason})" if fold.kind is FoldKind.MUL else "")
        if not search:
            where = f"scale not searched: nothing absorbs 1/s ({fold.reason}; smooth='all' would insert an explicit " \
                    f"x * (1/s)); {'clipping only' if self.clip else 'plain round-to-nearest'}"
        base = buffer_base(get_spec(linears[0])) + "_awq"
        self._apply([(region, n) for n in linears], xs, ctx, search, fold.kind.value, where,
                    lambda s: divide_input(gm, fold, x, linears, s, base))

    def _apply(self, nodes: list[tuple[Region, fx.Node]], xs: torch.Tensor, ctx: PassContext, search: bool,
               kind: str, where: str, fold) -> None:
        """Searches s over the linears ``nodes`` (all reading ``xs``), clips, sets their weights and
        calls ``fold(s)`` to divide their input by s."""
        spec = get_spec(nodes[0][1])
        weights = [resolve_weight(r.gm, linear_parts(n)[1])[0] for r, n in nodes]
        dev = weights[0].device
        xs = xs.to(dev)
        found = awq_search_scales(xs, [w.to(dev) for w in weights], spec.bits, spec.group_size, spec.symmetric,
                                  self.n_grid) if search else None
        scaled = found is not None and found.alpha > 0  # alpha = 0 is s = 1: nothing to fold, no mul to insert
        s = found.scales if scaled else torch.ones(spec.in_features, device=dev)
        if found is not None and not scaled:
            where = "nothing (alpha = 0: no scaling)"
        for (region, lin), w in zip(nodes, weights):
            ls = get_spec(lin)
            new_w = w.detach().float().to(dev) * s[None, :]
            if self.clip:
                new_w = awq_clip(xs / s[None, :], new_w, ls.bits, ls.group_size, ls.symmetric)
            if scaled or self.clip:
                set_linear_weight(region.gm, lin, new_w.to(device=w.device, dtype=w.dtype), buffer_base(ls) + "_awq_w")
            if scaled:
                update_spec(lin, smoothing=kind)
            ctx.state.samples[ls.layer] = rows_sample(xs / s[None, :], 256).cpu()
            ctx.note(ls.layer, f"awq: {where}" if found is None else
                     f"awq: alpha={found.alpha:.2f}, group output MSE {found.loss:.3g} (round-to-nearest "
                     f"{found.loss_rtn:.3g}); 1/s folded into: {where}")
        if scaled:
            fold(s)
