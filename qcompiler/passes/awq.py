"""``awq``: activation-aware scaling (and clipping) of weight-only linears, region by region.

Runs after ``annotate-weight-format{format=uint,...}`` and before ``quantize-weights``, which
then rounds the rescaled weights to nearest. For each region (one on ``device`` at a time, in
execution order; see ``sequential_calibrate``), the calibration calls run through it once and a
sample of the rows each group of linears reads (q/k/v together, gate/up together) is kept. Then,
per group:

1. :func:`qcompiler.quant.awq.awq_search_scales` picks ``s = mean|x|^alpha`` minimizing the
   group's output error after quantization;
2. the columns of each weight are multiplied by ``s`` and, with ``clip``, each (row, group) range
   is shrunk where that lowers the output error (:func:`~qcompiler.quant.awq.awq_clip`);
3. the input is divided by ``s`` where the scale-folding analysis (``scale_folding``) finds an op
   to absorb it - a LayerNorm/RMSNorm weight, or the rows of a previous linear - else by an
   explicit ``mul``, and the report says why.

The float function of the region does not change (up to rounding), so the search of every group
uses the float activations, as the reference implementation does.

Before (Llama MLP region, RMSNorm outside the region)::

    %up = aten.linear(%x, %w_up)   ...   %down = aten.linear(%mul, %w_down)

After::

    %xs = aten.mul(%x, %inv_s)                       # nothing inside the region to fold into
    %up = aten.linear(%xs, %w_up * s)  ...           # rows of w_up also absorb down's 1/s
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
from qcompiler.passes.scale_folding import FoldKind, divide_input, find_scale_fold
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
        if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 1:
            raise ConfigError(f"awq: max_rows must be an int >= 1, got {self.max_rows!r}")


    def run_program(self, program: Program, ctx: PassContext) -> dict[str, PassResult]:
        touched: set[str] = set()
        unreached = run_sequential(program, ctx, lambda r, calls: self._region(r, calls, ctx, touched),
                                   device=self.device, what="awq", progress=self.progress and ctx.progress)
        for path in unreached:
            ctx.note(path or "<model>", "awq: not reached by the calibration data; plain round-to-nearest")
        return {r.path: PassResult(r.gm, modified=r.path in touched) for r in program.regions}

    def _region(self, region: Region, calls, ctx: PassContext, touched: set[str]) -> None:
        gm = region.gm
        groups = linear_groups_in_order(gm, pending_uint)
        rows = [RowSampler(self.max_rows, len(calls)) for _ in groups]
        tap_inputs(region, calls, [(x, lins, r.add) for (x, lins), r in zip(groups, rows)])
        for (x, linears), sampler in zip(groups, rows):
            spec = get_spec(linears[0])
            xs = sampler.tensor(spec.in_features)
            if xs.shape[0] == 0:
                for lin in linears:
                    ctx.note(get_spec(lin).layer, "awq: no calibration rows reached it; plain round-to-nearest")
                continue
            ctx.region = region
            with ctx.at(linears[0]):
                self._group(gm, x, linears, xs, ctx)
            touched.add(region.path)

    def _group(self, gm: fx.GraphModule, x: fx.Node, linears: list[fx.Node], xs: torch.Tensor,
               ctx: PassContext) -> None:
        spec = get_spec(linears[0])
        weights = [resolve_weight(gm, linear_parts(lin)[1])[0] for lin in linears]
        dev = weights[0].device
        xs = xs.to(dev)
        found = awq_search_scales(xs, weights, spec.bits, spec.group_size, spec.symmetric, self.n_grid)
        scaled = found.alpha > 0  # alpha = 0 is s = 1: nothing to fold, no mul to insert
        s = found.scales if scaled else torch.ones_like(found.scales)
        fold = find_scale_fold(gm, x, linears, self.fold) if scaled else None
        where = "nothing (alpha = 0: no scaling)" if fold is None else \
            fold.kind.value + (f" ({fold.reason})" if fold.kind is FoldKind.MUL else "")
        for lin, w in zip(linears, weights):
            ls = get_spec(lin)
            new_w = w.detach().float() * s[None, :]
            if self.clip:
                new_w = awq_clip(xs / s[None, :], new_w, ls.bits, ls.group_size, ls.symmetric)
            if scaled or self.clip:
                set_linear_weight(gm, lin, new_w.to(w.dtype), buffer_base(ls) + "_awq_w")
            if fold is not None:
                update_spec(lin, smoothing=fold.kind.value)
            ctx.state.samples[ls.layer] = rows_sample(xs / s[None, :], 256).cpu()
            ctx.note(ls.layer, f"awq: alpha={found.alpha:.2f}, group output MSE {found.loss:.3g} "
                               f"(round-to-nearest {found.loss_rtn:.3g}); 1/s folded into: {where}")
        if fold is not None:
            divide_input(gm, fold, x, linears, s, buffer_base(spec) + "_awq")
