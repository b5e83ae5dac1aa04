"""What was quantized, how, and what it cost: built once at the end of ``compile``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx

from qcompiler.pass_manager import PassContext, Program
from qcompiler.passes._graph import get_attr_value, is_linear, linear_parts, resolve_weight
from qcompiler.passes.calibrate import SAMPLES
from qcompiler.passes.decompose_matmul import emit_quantized_linear
from qcompiler.passes.quantize_weights import FLOAT_WEIGHTS
from qcompiler.memory_usage import MemoryUsage
from qcompiler.spec import LAYER_KEY, get_spec

__all__ = ["LayerReport", "Report", "build_report"]


@dataclass
class LayerReport:
    layer: str
    region: str
    shape: tuple[int, int]               # (out_features, in_features)
    op: str                              # what the layer became
    lowering: str                        # which implementation runs it
    outlier_dims: list[int] | None       # None: dynamic or not applicable
    bytes_before: int
    bytes_after: int
    sqnr_db: float | None = None         # on the calibration rows kept for this layer
    rel_error: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    scheme: str
    backend: str
    pipeline: str
    layers: list[LayerReport]
    regions: list[str]
    split: list[tuple[str, str]]          # modules not captured whole, and why
    model_bytes_before: int
    model_bytes_after: int
    output_rel_error: float | None = None
    output_cosine: float | None = None
    notes: list[str] = field(default_factory=list)
    memory: MemoryUsage | None = None      # bytes once per storage, and the peak of the call that made it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        from qcompiler.report_render import to_json
        return to_json(self, indent)

    def to_markdown(self) -> str:
        from qcompiler.report_render import to_markdown
        return to_markdown(self)

    def __rich__(self):  # rich.print(report) draws the table
        from qcompiler.report_render import to_rich
        return to_rich(self)

    @property
    def quantized(self) -> list[LayerReport]:
        return [r for r in self.layers if r.op != "float"]

    def __str__(self) -> str:
        head = f"{'layer':<44} {'shape':>11} {'op':<34} {'outliers':<18} {'KiB before':>10} {'KiB after':>9} {'SQNR dB':>8}"
        lines = [f"qcompiler report - scheme {self.scheme}, backend {self.backend}",
                 f"pipeline: {self.pipeline}", head, "-" * len(head)]
        for r in self.layers:
            if r.outlier_dims is None:
                out = "dynamic" if "dynamic" in r.op else "-"
            else:
                shown = ",".join(map(str, r.outlier_dims[:4])) + ("..." if len(r.outlier_dims) > 4 else "")
                out = f"{len(r.outlier_dims)} [{shown}]"
            sq = f"{r.sqnr_db:8.1f}" if r.sqnr_db is not None and math.isfinite(r.sqnr_db) else f"{'n/a':>8}"
            lines.append(f"{r.layer[-44:]:<44} {r.shape[0]:>5}x{r.shape[1]:<5} {r.op[:34]:<34} {out[:18]:<18} "
                         f"{r.bytes_before / 1024:>10.1f} {r.bytes_after / 1024:>9.1f} {sq}")
            for n in r.notes:
                lines.append(f"    note: {n}")
        q = self.quantized
        before, after = sum(r.bytes_before for r in q), sum(r.bytes_after for r in q)
        lines.append("-" * len(head))
        lines.append(f"{len(q)} of {len(self.layers)} linear layers quantized; their weights "
                     f"{before / 2**20:.2f} MiB -> {after / 2**20:.2f} MiB"
                     + (f" ({before / after:.2f}x smaller)" if after else ""))
        lines.append(f"whole model (parameters + buffers): {self.model_bytes_before / 2**20:.2f} MiB -> "
                     f"{self.model_bytes_after / 2**20:.2f} MiB")
        if self.output_rel_error is not None:
            lines.append(f"model output vs float on calibration data: rel. error {self.output_rel_error:.4g}, "
                         f"cosine {self.output_cosine:.6f}")
        for path, why in self.split:
            lines.append(f"split: {path}: {why[:160]}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _layer_error(gm: fx.GraphModule, spec, w: torch.Tensor, x: torch.Tensor):
    """SQNR and relative error of the quantized layer against float64, on calibration rows.
    Runs the reference ops of the spec, so it measures the scheme, not a backend's kernel."""
    bias_name = spec.weights.bias
    bias = get_attr_value(gm, bias_name) if bias_name else None
    graph = fx.Graph()
    xin = graph.placeholder("x")
    b = graph.get_attr(bias_name) if bias_name else None
    empty = "_qc_empty_idx" if hasattr(gm, "_qc_empty_idx") else None
    graph.output(emit_quantized_linear(graph, spec, xin, b, w.dtype, empty))
    mini = fx.GraphModule(gm, graph)
    x = x.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        y = mini(x).double()
        xd = x.double()  # W in float64 4096 rows at a time: a whole one is 4x its fp16 bytes
        ref = torch.cat([xd @ w[i:i + 4096].double().t() for i in range(0, w.shape[0], 4096)], dim=-1) \
            + (bias.double() if bias is not None else 0)
    err = (y - ref).norm().item()
    sig = ref.norm().item()
    sqnr = float("inf") if err == 0 else 10 * math.log10(max(sig, 1e-300) ** 2 / err ** 2)
    return sqnr, (err / sig if sig else None)


def build_report(program: Program, ctx: PassContext, *, scheme: str, backend: str, pipeline: str,
                 split: list[tuple[str, str]], model_bytes_before: int) -> Report:
    rows: list[LayerReport] = []
    float_w = ctx.options.get(FLOAT_WEIGHTS, {})
    samples = ctx.options.get(SAMPLES, {})
    for region in program.regions:
        gm = region.gm
        for node in gm.graph.nodes:
            spec = get_spec(node)
            if is_linear(node):
                resolved = resolve_weight(gm, linear_parts(node)[1])
                name = spec.layer if spec else node.meta.get(LAYER_KEY, f"{region.label}:{node.name}")
                w = resolved[0] if resolved else None
                rows.append(LayerReport(name, region.label, tuple(w.shape) if w is not None else (0, 0), "float",
                                        "aten.linear", None, _nbytes(w), _nbytes(w),
                                        notes=list(ctx.notes.get(name, [])) or ["kept in float by the pipeline"]))
                continue
            if spec is None or node.op != "call_function" or spec.weights is None:
                continue
            refs = spec.weights
            after = sum(_nbytes(get_attr_value(gm, n)) for n in refs.buffers())
            w = float_w.get(spec.layer)
            row = LayerReport(spec.layer, region.label, (spec.out_features, spec.in_features), spec.op_name,
                              spec.lowering, list(spec.outlier_idx) if spec.outliers.value == "static" else None,
                              _nbytes(w), after, notes=list(ctx.notes.get(spec.layer, [])) + list(spec.notes))
            if w is not None and spec.layer in samples and samples[spec.layer].shape[0]:
                row.sqnr_db, row.rel_error = _layer_error(gm, spec, w, samples[spec.layer])
            rows.append(row)
    after_total = sum(_nbytes(t) for t in program.root.state_dict().values() if isinstance(t, torch.Tensor))
    return Report(scheme, backend, pipeline, rows, [r.label for r in program.regions], split,
                  model_bytes_before, after_total)
