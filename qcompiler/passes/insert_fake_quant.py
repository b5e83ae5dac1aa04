"""``insert-fake-quant``: make each annotated linear compute with fake-quantized operands, for
quantization-aware training. Reads the spec that ``annotate-linears`` (and
``annotate-weight-format``) wrote, so QAT trains against the grid the scheme will store.

Before (W8A8, ``act=row``)::

    %linear = aten.linear(%x, %w, %b)

After::

    %xq = qcompiler.fake_quantize_int8(%x, True, inf)        # per row of X
    %wq = qcompiler.fake_quantize_int8(%w, True, inf)        # per output channel of W
    %linear = aten.linear(%xq, %wq, %b)

Weight-only specs get ``fake_quantize_uint(%w, bits, group_size, symmetric)`` or
``fake_quantize_nf4(%w, block)`` on W and leave X alone. Outlier specs (static or dynamic) keep
the columns of X above the threshold exact, as the dynamic decomposition does. ``%w`` stays a
parameter: gradients reach it through the straight-through estimator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

import qcompiler.ops.fake_quant  # noqa: F401 - registers the fake-quantization ops
from qcompiler.contracts import FAKE_QUANTIZED, FORMAT_CHOSEN, LINEARS_ANNOTATED, WEIGHTS_QUANTIZED, Contract
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import is_linear, linear_parts
from qcompiler.quant import effective_group_size
from qcompiler.spec import ActGranularity, LinearQuantSpec, OutlierMode, WeightFormat, WeightGranularity, get_spec

__all__ = ["InsertFakeQuant", "WEIGHT_FAKE_QUANT"]

_ops = torch.ops.qcompiler


def _int8_weight(graph: fx.Graph, w: fx.Node, spec: LinearQuantSpec) -> fx.Node:
    return graph.call_function(_ops.fake_quantize_int8.default,
                               (w, spec.weight is WeightGranularity.CHANNEL, math.inf))


def _uint_weight(graph: fx.Graph, w: fx.Node, spec: LinearQuantSpec) -> fx.Node:
    g = effective_group_size(spec.in_features, spec.group_size)
    return graph.call_function(_ops.fake_quantize_uint.default, (w, spec.bits, g, spec.symmetric))


def _nf4_weight(graph: fx.Graph, w: fx.Node, spec: LinearQuantSpec) -> fx.Node:
    return graph.call_function(_ops.fake_quantize_nf4.default,
                               (w, effective_group_size(spec.in_features, spec.group_size)))


# spec.format -> how the weight operand is fake-quantized
WEIGHT_FAKE_QUANT: dict[WeightFormat, Callable[[fx.Graph, fx.Node, LinearQuantSpec], fx.Node]] = {
    WeightFormat.INT8: _int8_weight,
    WeightFormat.UINT: _uint_weight,
    WeightFormat.NF4: _nf4_weight,
}


@register_pass("insert-fake-quant")
@dataclass(frozen=True)
class InsertFakeQuant(GraphPass):
    def contract(self) -> Contract:
        return Contract(requires={LINEARS_ANNOTATED, FORMAT_CHOSEN}, ensures={FAKE_QUANTIZED},
                        forbids={WEIGHTS_QUANTIZED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            spec = get_spec(node) if is_linear(node) else None
            if spec is None:
                continue
            with ctx.at(node):
                x, w, b = linear_parts(node)
                with gm.graph.inserting_before(node):
                    wq = WEIGHT_FAKE_QUANT[spec.format](gm.graph, w, spec)
                    xq = x
                    if spec.act is not ActGranularity.NONE:
                        t = spec.threshold if spec.outliers is not OutlierMode.NONE else math.inf
                        xq = gm.graph.call_function(_ops.fake_quantize_int8.default,
                                                    (x, spec.act is ActGranularity.ROW, float(t)))
                node.args = (xq, wq, b)
                node.kwargs = {}
                modified = True
        return PassResult(gm, modified)
