"""``gptq``: weight-only linears quantized with GPTQ, region by region, in execution order.

Runs after ``annotate-weight-format{format=uint,...}`` (the spec says bits, group size and
symmetry) and before ``quantize-weights``. For each region (see ``sequential_calibrate``: one on
``device`` at a time, fed by the already-quantized regions before it) and, inside the region,
for each group of linears reading the same tensor, in graph order:

1. the calibration calls run through the region up to that tensor; ``H = 2 X^T X`` of its rows
   is accumulated (the rest of the region is not run);
2. each linear of the group is quantized by :func:`qcompiler.quant.gptq.gptq_quantize`, and its
   codes, scales and zero points are stored as its quantized weight
   (:func:`~qcompiler.passes.quantize_weights.materialize_uint`);
3. the linear then multiplies by the dequantized weight, so the next group's inputs - and the
   next regions' - carry the quantization error of everything before them (GPTQ's sequential
   order).

Linears no calibration call reaches are left for ``quantize-weights`` (round-to-nearest) and
noted. Afterwards ``decompose-matmul`` emits ``qcompiler::weight_only_linear`` for every linear,
exactly as for the round-to-nearest schemes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from qcompiler.errors import ConfigError
from qcompiler.contracts import CALIBRATION_DATA, FORMAT_UINT, LINEARS_ANNOTATED, WEIGHTS_QUANTIZED, Contract
from qcompiler.pass_manager import PassContext, PassResult, Program, ProgramPass, Region, register_pass
from qcompiler.graph.nodes import linear_parts, resolve_weight
from qcompiler.graph.rebind import set_linear_weight
from qcompiler.passes.layer_inputs import linear_groups_in_order, tap_inputs
from qcompiler.passes.quantize_weights import buffer_base, materialize_uint
from qcompiler.passes.sequential_calibrate import region_device, run_sequential
from qcompiler.quant.gptq import HessianAccumulator, gptq_quantize
from qcompiler.spec import WeightFormat, get_spec

__all__ = ["GPTQ", "RowSampler", "pending_uint"]


def pending_uint(node: fx.Node) -> bool:
    """An annotated uint weight-only linear whose weight nobody has quantized yet."""
    spec = get_spec(node)
    return spec is not None and spec.format is WeightFormat.UINT and spec.weights is None


class RowSampler:
    """Keeps about ``limit`` rows of what it is shown over ``calls`` calls (for the report)."""

    def __init__(self, limit: int, calls: int):
        self.per_call = max(1, math.ceil(limit / max(1, calls)))
        self.limit = limit
        self.rows: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] and sum(r.shape[0] for r in self.rows) < self.limit:
            step = max(1, flat.shape[0] // self.per_call)
            self.rows.append(flat[::step][: self.per_call].float().cpu())

    def tensor(self, k: int) -> torch.Tensor:
        return torch.cat(self.rows)[: self.limit] if self.rows else torch.empty(0, k)


@register_pass("gptq")
@dataclass(frozen=True)
class GPTQ(ProgramPass):
    percdamp: float = 0.01     # dampening: this fraction of mean(diag H) is added to the diagonal
    block_size: int = 128      # columns per lazy batch update
    act_order: bool = False    # visit columns by decreasing diag(H)
    device: str | None = None  # where each region is quantized (one at a time); None: where it is
    max_samples: int = 256     # calibration rows kept per layer for the report's error estimate
    progress: bool = True      # show a bar when the compile shows progress

    def contract(self) -> Contract:
        return Contract(requires={LINEARS_ANNOTATED, FORMAT_UINT, CALIBRATION_DATA}, forbids={WEIGHTS_QUANTIZED})

    def __post_init__(self):
        if not (isinstance(self.percdamp, (int, float)) and 0 <= self.percdamp < 10):
            raise ConfigError(f"gptq: percdamp must be a number in [0, 10), got {self.percdamp!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ConfigError(f"gptq: block_size must be an int >= 1, got {self.block_size!r}")
        if self.device in ("none", "None"):  # the text form of None (print_pipeline writes "None")
            object.__setattr__(self, "device", None)
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ConfigError(f"gptq: device {self.device!r} is not a torch device",
                                  hint="use e.g. 'cpu', 'cuda' or 'cuda:1'") from None


    def run_program(self, program: Program, ctx: PassContext) -> dict[str, PassResult]:
        done: dict[str, list[str]] = {}
        unreached = run_sequential(program, ctx, lambda r, calls: self._region(r, calls, ctx, done),
                                   device=self.device, what="gptq", progress=self.progress and ctx.progress)
        fw = ctx.state.float_weights
        for region in program.regions:  # the region is back home: so must the report's float weights be
            home = region_device(region.module)
            for layer in done.get(region.path, []):
                fw[layer] = fw[layer].to(home)
        for path in unreached:
            ctx.note(path or "<model>", "gptq: not reached by the calibration data; round-to-nearest instead")
        return {r.path: PassResult(r.gm, modified=r.path in done) for r in program.regions}

    def _region(self, region: Region, calls, ctx: PassContext, done: dict[str, list[str]]) -> None:
        gm = region.gm
        layers = done.setdefault(region.path, [])
        for x, linears in linear_groups_in_order(gm, pending_uint):
            k = get_spec(linears[0]).in_features
            acc = HessianAccumulator(k, region_device(region.module))
            rows = RowSampler(self.max_samples, len(calls))
            tap_inputs(region, calls, [(x, linears, lambda t: (acc.add(t), rows.add(t)))], stop=True)
            if acc.rows == 0:
                for lin in linears:
                    ctx.note(get_spec(lin).layer, "gptq: no calibration rows reached it; round-to-nearest instead")
                continue
            for lin in linears:
                ctx.region = region
                with ctx.at(lin):
                    self._quantize(gm, lin, acc, rows.tensor(k), ctx)
                layers.append(get_spec(lin).layer)

    def _quantize(self, gm: fx.GraphModule, lin: fx.Node, acc: HessianAccumulator, rows: torch.Tensor,
                  ctx: PassContext) -> None:
        spec = get_spec(lin)
        w, _ = resolve_weight(gm, linear_parts(lin)[1])
        res = gptq_quantize(w, acc.hessian, spec.bits, spec.group_size, spec.symmetric,
                            percdamp=self.percdamp, block_size=self.block_size, act_order=self.act_order)
        u = res.weight
        materialize_uint(gm, lin, u.codes, u.scales, u.zeros)
        ctx.state.float_weights[spec.layer] = w
        ctx.state.samples[spec.layer] = rows
        # From here on the layer computes with its quantized weight: later layers calibrate on that.
        set_linear_weight(gm, lin, res.dequantized.to(w.dtype), buffer_base(spec) + "_gptq_dq")
        ctx.note(spec.layer, f"gptq: {acc.rows} calibration rows, est. added error {res.loss:.4g}"
                             + (", act-order" if self.act_order else ""))
