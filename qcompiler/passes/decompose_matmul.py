"""``decompose-matmul``: each annotated linear becomes its quantized subgraph (LLM.int8()).

Before::

    %linear = aten.linear(%x, %w, %b)

After (static outliers)::

    %q = qcompiler.quantize_rowwise(%x, %oidx)          # X int8, row scales, X[:, outliers]
    %y = qcompiler.int8_linear(%q[0], %q[1], %qweight, %wscale, %q[2], %wout, %b, dtype)

The dynamic form uses ``quantize_rowwise_dynamic`` + ``int8_linear_dynamic_outlier``; the
per-tensor form ``quantize_tensorwise`` + ``int8_linear`` without outliers.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.passes._graph import add_buffer, is_linear, linear_parts
from qcompiler.passes.quantize_weights import FLOAT_WEIGHTS
from qcompiler.spec import SPEC_KEY, ActGranularity, LinearQuantSpec, OutlierMode, get_spec

__all__ = ["DecomposeMatmul", "emit_quantized_linear"]

_ops = torch.ops.qcompiler


def emit_quantized_linear(graph: fx.Graph, spec: LinearQuantSpec, x: fx.Node, bias: fx.Node | None,
                          out_dtype: torch.dtype, empty_idx: str | None) -> fx.Node:
    """Emits the quantized subgraph of ``spec`` at the graph's insertion point; returns the output
    node. ``empty_idx`` names an empty int64 buffer used when there are no static outliers."""
    refs = spec.weights
    wq, ws = graph.get_attr(refs.qweight), graph.get_attr(refs.scale)
    if spec.act is ActGranularity.TENSOR:
        q = graph.call_function(_ops.quantize_tensorwise.default, (x,))
        xq, xs = (graph.call_function(operator.getitem, (q, i)) for i in range(2))
        return graph.call_function(_ops.int8_linear.default, (xq, xs, wq, ws, None, None, bias, out_dtype))
    if spec.outliers is OutlierMode.DYNAMIC:
        q = graph.call_function(_ops.quantize_rowwise_dynamic.default, (x, float(spec.threshold)))
        xq, xs, mask = (graph.call_function(operator.getitem, (q, i)) for i in range(3))
        return graph.call_function(_ops.int8_linear_dynamic_outlier.default, (xq, xs, x, mask, wq, ws, bias))
    static = spec.outliers is OutlierMode.STATIC and spec.outlier_idx
    idx = graph.get_attr(refs.outlier_idx if static else empty_idx)
    q = graph.call_function(_ops.quantize_rowwise.default, (x, idx))
    xq, xs, xo = (graph.call_function(operator.getitem, (q, i)) for i in range(3))
    wo = graph.get_attr(refs.outlier_weight) if static else None
    return graph.call_function(_ops.int8_linear.default,
                               (xq, xs, wq, ws, xo if static else None, wo, bias, out_dtype))


@register_pass("decompose-matmul")
@dataclass(frozen=True)
class DecomposeMatmul(GraphPass):
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified, empty_idx = False, None
        for node in list(gm.graph.nodes):
            spec = get_spec(node) if is_linear(node) else None
            if spec is None or spec.weights is None:
                continue
            with ctx.at(node):
                x, _, bias = linear_parts(node)
                qweight = getattr(gm, spec.weights.qweight)
                if empty_idx is None:
                    empty_idx = add_buffer(gm, "_qc_empty_idx",
                                           torch.empty(0, dtype=torch.long, device=qweight.device))
                out_dtype = node.meta["val"].dtype if "val" in node.meta else \
                    ctx.options[FLOAT_WEIGHTS][spec.layer].dtype
                with gm.graph.inserting_before(node):
                    y = emit_quantized_linear(gm.graph, spec, x, bias, out_dtype, empty_idx)
                y.meta[SPEC_KEY] = spec
                if "val" in node.meta:
                    y.meta["val"] = node.meta["val"]
                node.replace_all_uses_with(y)
                gm.graph.erase_node(node)
                modified = True
        return PassResult(gm, modified)
