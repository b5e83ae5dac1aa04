"""What was quantized, how, and what it cost: built once at the end of ``compile``."""

from __future__ import annotations

import math

import torch
from torch import fx

from qcompiler.pass_manager import PassContext, Program
from qcompiler.graph.nodes import get_attr_value, is_linear, linear_parts, resolve_weight
from qcompiler.passes.decompose_matmul import emit_quantized_linear
from qcompiler.spec import LAYER_KEY, get_spec
from qcompiler.report.data import LayerReport, Report
from qcompiler.model_bytes import state_bytes

__all__ = ["build_report"]


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
    float_w = ctx.state.float_weights
    samples = ctx.state.samples
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
    after_total = state_bytes(program.root)  # tied tensors once
    return Report(scheme, backend, pipeline, rows, [r.label for r in program.regions], split,
                  model_bytes_before, after_total)
