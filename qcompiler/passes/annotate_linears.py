"""``annotate-linears``: decide, per linear node, how it is quantized (a LinearQuantSpec in
``node.meta``). Nothing in the graph changes; later passes materialize the decision.

Linears whose weight is not a constant (computed from activations) are left alone and noted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from qcompiler.errors import UnsupportedError
from qcompiler.contracts import (ACT_FLOAT, ACT_INT8, ACT_ROW, ACT_TENSOR, FORMAT_CHOSEN, FORMAT_NF4, FORMAT_UINT,
                                 LINEARS_ANNOTATED, OUTLIERS_DETECTED, WEIGHTS_QUANTIZED, Contract)
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import is_linear, layer_name, linear_parts, resolve_weight
from qcompiler.spec import LAYER_KEY, ActGranularity, LinearQuantSpec, WeightGranularity, set_spec

__all__ = ["AnnotateLinears", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@register_pass("annotate-linears")
@dataclass(frozen=True)
class AnnotateLinears(GraphPass):
    act: ActGranularity = ActGranularity.ROW
    weight: WeightGranularity = WeightGranularity.CHANNEL

    def contract(self) -> Contract:
        act = {ActGranularity.ROW: ACT_ROW, ActGranularity.TENSOR: ACT_TENSOR, ActGranularity.NONE: ACT_FLOAT}[self.act]
        int8 = (ACT_INT8, FORMAT_CHOSEN) if self.act is not ActGranularity.NONE else ()  # W8A8: format int8
        return Contract(ensures={LINEARS_ANNOTATED, act, *int8}, forbids={WEIGHTS_QUANTIZED},  # fresh specs
                        invalidates={ACT_INT8, FORMAT_CHOSEN, FORMAT_UINT, FORMAT_NF4, OUTLIERS_DETECTED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        for node in gm.graph.nodes:
            if not is_linear(node):
                continue
            with ctx.at(node):
                _, w_node, _ = linear_parts(node)
                resolved = resolve_weight(gm, w_node)
                if resolved is None:
                    ctx.note(f"{ctx.region.label}:{node.name}", "kept in float: weight is computed, not a parameter")
                    continue
                w, target = resolved
                name = layer_name(ctx.region.path, target)
                node.meta[LAYER_KEY] = name
                if w.dtype not in SUPPORTED_DTYPES:
                    raise UnsupportedError(
                        f"layer '{name}' has weights of dtype {w.dtype}",
                        hint="qcompiler quantizes float32, float16 and bfloat16 models; cast the model first")
                set_spec(node, LinearQuantSpec(layer=name, in_features=w.shape[1], out_features=w.shape[0],
                                               act=self.act, weight=self.weight))
        return PassResult(gm, modified=False, preserved=PassResult.ALL)
