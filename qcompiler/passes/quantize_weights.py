"""``quantize-weights``: int8 weights (absmax per output channel, or per tensor) as buffers on
the graph module, named in the spec. Static outlier input-dims of W are kept in float and zeroed
in the int8 copy, so they do not inflate the channel scales. The linear is not yet rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from qcompiler.ops import quantize_weight
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.passes._graph import add_buffer, is_linear, linear_parts, resolve_weight
from qcompiler.spec import ActGranularity, OutlierMode, WeightGranularity, WeightRefs, get_spec, update_spec

__all__ = ["QuantizeWeights", "FLOAT_WEIGHTS"]

# ctx.options key: layer -> the float weight, kept only until compile ends (for the report)
FLOAT_WEIGHTS = "float_weights"


@register_pass("quantize-weights")
@dataclass(frozen=True)
class QuantizeWeights(GraphPass):
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for node in gm.graph.nodes:
            spec = get_spec(node) if is_linear(node) else None
            if spec is None or spec.weights is not None or spec.act is ActGranularity.NONE:
                continue
            with ctx.at(node):
                _, w_node, b_node = linear_parts(node)
                w, _ = resolve_weight(gm, w_node)
                ctx.options.setdefault(FLOAT_WEIGHTS, {})[spec.layer] = w
                base = "_qc_" + spec.layer.replace(".", "_").replace("<", "").replace(">", "")
                idx = torch.tensor(spec.outlier_idx, dtype=torch.long, device=w.device)
                w_int = w.detach()
                outlier_weight = None
                static = spec.outliers is OutlierMode.STATIC and bool(spec.outlier_idx)
                if static:
                    outlier_weight = add_buffer(gm, base + "_wout", w_int.index_select(1, idx).contiguous())
                    w_int = w_int.index_fill(1, idx, 0)
                qw, scale = quantize_weight(w_int, per_channel=spec.weight is WeightGranularity.CHANNEL)
                refs = WeightRefs(
                    qweight=add_buffer(gm, base + "_qweight", qw),
                    scale=add_buffer(gm, base + "_wscale", scale),
                    outlier_weight=outlier_weight,
                    outlier_idx=add_buffer(gm, base + "_oidx", idx) if static else None,
                    bias=b_node.target if isinstance(b_node, fx.Node) and b_node.op == "get_attr" else None,
                )
                update_spec(node, weights=refs)
                modified = True
        return PassResult(gm, modified, preserved=PassResult.ALL)
