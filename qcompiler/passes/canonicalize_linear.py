"""``canonicalize-linear``: every linear-like form becomes ``aten.linear(x, W, b)``.

Before (GPT-2's Conv1D, exported)::

    %addmm = aten.addmm(%bias, %view, %weight)        # weight is [K, N]

After::

    %t = aten.t(%weight)
    %linear = aten.linear(%view, %t, %bias)

Handled: ``aten.linear`` (already canonical), ``F.linear``/``torch._C._nn.linear``,
``nn.Linear`` call_module nodes (symbolic_trace), ``addmm(b, x, W)``, and ``mm``/``matmul(x, W)``
where W resolves to a constant 2-D parameter or buffer (possibly through a transpose).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import LINEAR, is_transpose, resolve_weight

__all__ = ["CanonicalizeLinear"]

_F_LINEAR = {F.linear, torch._C._nn.linear}
_MATMUL = {torch.ops.aten.mm.default, torch.ops.aten.matmul.default, torch.matmul, torch.mm,
           operator.matmul}
_ADDMM = {torch.ops.aten.addmm.default, torch.addmm}


def _transposed(graph: fx.Graph, w: fx.Node) -> fx.Node:
    if is_transpose(w):
        return w.args[0]  # matmul(x, W.t()) is linear(x, W): drop the double transpose
    return graph.call_function(torch.ops.aten.t.default, (w,))


@register_pass("canonicalize-linear")
@dataclass(frozen=True)
class CanonicalizeLinear(GraphPass):
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        graph, modified = gm.graph, False
        for node in list(graph.nodes):
            with ctx.at(node):
                new = self._rewrite(gm, node)
            if new is not None:
                new.meta.update({k: v for k, v in node.meta.items() if k != "qcompiler.spec"})
                node.replace_all_uses_with(new)
                graph.erase_node(node)
                modified = True
        return PassResult(gm, modified)

    @staticmethod
    def _rewrite(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
        graph = gm.graph
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Linear):
            mod = gm.get_submodule(node.target)
            with graph.inserting_before(node):
                w = graph.get_attr(f"{node.target}.weight")
                b = graph.get_attr(f"{node.target}.bias") if mod.bias is not None else None
                return graph.call_function(LINEAR, (node.args[0], w, b))
        if node.op != "call_function":
            return None
        if node.target in _F_LINEAR:
            x, w, *rest = list(node.args) + [node.kwargs.get("bias")]
            with graph.inserting_before(node):
                return graph.call_function(LINEAR, (x, w, rest[0] if rest else None))
        if node.target in _MATMUL and len(node.args) == 2 and not node.kwargs:
            x, w = node.args
            if resolve_weight(gm, w) is None:
                return None  # activation @ activation (attention scores): not a linear layer
            with graph.inserting_before(node):
                return graph.call_function(LINEAR, (x, _transposed(graph, w), None))
        if node.target in _ADDMM and len(node.args) == 3 and not node.kwargs:
            b, x, w = node.args
            if resolve_weight(gm, w) is None:
                return None
            bias_ok = isinstance(b, fx.Node) and b.op == "get_attr"
            with graph.inserting_before(node):
                lin = graph.call_function(LINEAR, (x, _transposed(graph, w), b if bias_ok else None))
                return lin if bias_ok else graph.call_function(torch.ops.aten.add.Tensor, (lin, b))
        return None
