"""``share-activation-quant``: matmuls reading the same tensor with the same outlier columns
(q/k/v, gate/up) share one activation quantization instead of quantizing X once each."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import fx

from qcompiler.ops import QUANTIZE_OPS
from qcompiler.contracts import DECOMPOSED, Contract
from qcompiler.ops.args import args_of
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import get_attr_value
from qcompiler.spec import get_spec, update_spec

__all__ = ["ShareActivationQuant"]


def _key(gm: fx.GraphModule, node: fx.Node) -> tuple:
    parts = [node.target]
    for a in node.args:
        if isinstance(a, fx.Node) and a.op == "get_attr":
            t = get_attr_value(gm, a.target)  # equal index buffers count as the same operand
            parts.append(("buf", tuple(t.tolist())))
        else:
            parts.append(a)
    return tuple(parts)


@register_pass("share-activation-quant")
@dataclass(frozen=True)
class ShareActivationQuant(GraphPass):
    def contract(self) -> Contract:
        return Contract(requires={DECOMPOSED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        seen: dict[tuple, fx.Node] = {}
        modified = False
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target not in QUANTIZE_OPS:
                continue
            key = _key(gm, node)
            if key in seen:
                self._retarget_specs(node, seen[key])
                node.replace_all_uses_with(seen[key])
                gm.graph.erase_node(node)
                modified = True
            else:
                seen[key] = node
        if modified:  # getitems of the shared node now repeat: fold them too
            self._dedupe_getitems(gm)
        return PassResult(gm, modified)

    @staticmethod
    def _retarget_specs(dropped: fx.Node, kept: fx.Node) -> None:
        """Matmuls fed by ``dropped`` now read ``kept``'s outlier-index buffer: say so in their spec."""
        idx = getattr(args_of(kept), "outlier_idx", None)  # only quantize_rowwise has an index buffer
        idx = idx if isinstance(idx, fx.Node) else None
        for item in dropped.users:
            for mm in item.users:
                spec = get_spec(mm)
                if spec is not None and spec.weights is not None and spec.weights.outlier_idx and idx is not None:
                    update_spec(mm, weights=replace(spec.weights, outlier_idx=idx.target))

    @staticmethod
    def _dedupe_getitems(gm: fx.GraphModule) -> None:
        import operator
        seen: dict[tuple, fx.Node] = {}
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target is operator.getitem:
                key = (node.args[0], node.args[1])
                if key in seen:
                    node.replace_all_uses_with(seen[key])
                    gm.graph.erase_node(node)
                else:
                    seen[key] = node
