"""``decompose-matmul``: each annotated linear becomes its quantized subgraph (LLM.int8()).

Before::

    %linear = aten.linear(%x, %w, %b)

After (static outliers)::

    %q = qcompiler.quantize_rowwise(%x, %oidx)          # X int8, row scales, X[:, outliers]
    %y = qcompiler.int8_linear(%q[0], %q[1], %qweight, %wscale, %q[2], %wout, %b, dtype)

The dynamic form uses ``quantize_rowwise_dynamic`` + ``int8_linear_dynamic_outlier``; the
per-tensor form ``quantize_tensorwise`` + ``int8_linear`` without outliers.

Weight-only formats keep x in float (``ops/weight_only.py``)::

    %y = qcompiler.weight_only_linear(%x, %qweight, %wscale, %wzero, %b, 4, 128)   # UINT
    %a = qcompiler.dequantize_blockwise_int8(%absmax_q, %absmax_scale, %absmax_offset, 256)
    %y = qcompiler.nf4_linear(%x, %qweight, %a, %b, 64)                           # NF4 (+dq)

Which subgraph a spec becomes is looked up by ``spec.format`` in :data:`EMITTERS`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from qcompiler.contracts import CALIBRATED, DECOMPOSED, WEIGHTS_QUANTIZED, Contract
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import add_buffer, is_linear, linear_parts
from qcompiler.quant import effective_group_size
from qcompiler.quant.nf4 import DOUBLE_QUANT_BLOCK
from qcompiler.spec import SPEC_KEY, ActGranularity, LinearQuantSpec, OutlierMode, WeightFormat, get_spec

__all__ = ["DecomposeMatmul", "emit_quantized_linear", "EMITTERS"]

_ops = torch.ops.qcompiler

# (graph, spec, x, bias, out_dtype, empty_idx) -> the node computing the layer's output
Emitter = Callable[[fx.Graph, LinearQuantSpec, fx.Node, "fx.Node | None", torch.dtype, "str | None"], fx.Node]


def emit_quantized_linear(graph: fx.Graph, spec: LinearQuantSpec, x: fx.Node, bias: fx.Node | None,
                          out_dtype: torch.dtype, empty_idx: str | None) -> fx.Node:
    """Emits the quantized subgraph of ``spec`` at the graph's insertion point; returns the output
    node. ``empty_idx`` names an empty int64 buffer used when there are no static outliers."""
    return EMITTERS[spec.format](graph, spec, x, bias, out_dtype, empty_idx)


def _emit_int8(graph: fx.Graph, spec: LinearQuantSpec, x: fx.Node, bias: fx.Node | None,
               out_dtype: torch.dtype, empty_idx: str | None) -> fx.Node:
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


def _emit_uint(graph: fx.Graph, spec: LinearQuantSpec, x: fx.Node, bias: fx.Node | None,
               out_dtype: torch.dtype, empty_idx: str | None) -> fx.Node:
    refs = spec.weights
    zeros = graph.get_attr(refs.zeros) if refs.zeros is not None else None
    g = effective_group_size(spec.in_features, spec.group_size)
    return graph.call_function(_ops.weight_only_linear.default,
                               (x, graph.get_attr(refs.qweight), graph.get_attr(refs.scale), zeros, bias,
                                spec.bits, g))


def _emit_nf4(graph: fx.Graph, spec: LinearQuantSpec, x: fx.Node, bias: fx.Node | None,
              out_dtype: torch.dtype, empty_idx: str | None) -> fx.Node:
    refs = spec.weights
    absmax = graph.get_attr(refs.scale)
    if spec.double_quant:
        absmax = graph.call_function(_ops.dequantize_blockwise_int8.default,
                                     (absmax, graph.get_attr(refs.scale_scale), graph.get_attr(refs.scale_offset),
                                      DOUBLE_QUANT_BLOCK))
    b = effective_group_size(spec.in_features, spec.group_size)
    return graph.call_function(_ops.nf4_linear.default, (x, graph.get_attr(refs.qweight), absmax, bias, b))


EMITTERS: dict[WeightFormat, Emitter] = {
    WeightFormat.INT8: _emit_int8,
    WeightFormat.UINT: _emit_uint,
    WeightFormat.NF4: _emit_nf4,
}


@register_pass("decompose-matmul")
@dataclass(frozen=True)
class DecomposeMatmul(GraphPass):
    def contract(self) -> Contract:
        # the observed linears are gone: their statistics no longer describe this graph
        return Contract(requires={WEIGHTS_QUANTIZED}, ensures={DECOMPOSED}, invalidates={CALIBRATED})

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
                    ctx.state.float_weights[spec.layer].dtype
                with gm.graph.inserting_before(node):
                    y = emit_quantized_linear(gm.graph, spec, x, bias, out_dtype, empty_idx)
                y.meta[SPEC_KEY] = spec
                if "val" in node.meta:
                    y.meta["val"] = node.meta["val"]
                node.replace_all_uses_with(y)
                gm.graph.erase_node(node)
                modified = True
        return PassResult(gm, modified)
