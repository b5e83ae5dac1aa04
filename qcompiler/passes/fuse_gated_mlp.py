"""A gated MLP's ``act(gate) * up`` folded into its fused gate/up linear (sibling fusion's MLP graph).

After sibling fusion an MLP region's hot-path graph reads::

    %y = qcompiler_triton.int8_outlier_linear(%x, %w_gate_up, ...)      # [..., 2H]
    %g = aten.slice(%y, -1, 0, H)
    %a = aten.silu(%g)
    %u = aten.slice(%y, -1, H, 2H)
    %m = aten.mul(%a, %u)                                               # -> down_proj

and becomes::

    %m = qcompiler_triton.int8_outlier_linear_silu_mul(%x, %w_gate_up, ..., H)

whose prompt-size kernel writes only ``%m`` (the ``[..., 2H]`` product never reaches memory;
:mod:`qcompiler.backends.triton.int8_linear_gated_tma`), with the same 16-bit values as the five
nodes it replaces. Each rule is data (:func:`gated_rules`): the linear op, the activation, the op
that does both. Only this exact shape matches: every intermediate used once, the two halves
equal and covering the whole output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx

__all__ = ["GatedRule", "gated_rules", "fuse_gated_mlp"]

_OPS = torch.ops.qcompiler_triton
_ATEN = torch.ops.aten


@dataclass(frozen=True)
class GatedRule:
    """``mul(act(slice(linear(x), 0, H)), slice(linear(x), H, 2H))`` -> ``gated(x, ..., H)``; the
    gated op takes the linear's arguments with ``split`` inserted before ``act_quant``."""

    name: str
    linear: Any
    act: Any
    gated: Any


def gated_rules() -> tuple[GatedRule, ...]:
    """The rules :func:`fuse_gated_mlp` applies (built on first use: the ops register on import
    of :mod:`qcompiler.backends.triton.ops`)."""
    import qcompiler.backends.triton.ops  # noqa: F401 - registers the qcompiler_triton ops
    return (GatedRule("silu-mul-in-int8-gemm", _OPS.int8_outlier_linear.default, _ATEN.silu.default,
                      _OPS.int8_outlier_linear_silu_mul.default),)


def _slice_of(node: Any, y: fx.Node) -> Optional[tuple[int, int]]:
    """``(start, end)`` if ``node`` is ``aten.slice(y, -1, start, end)`` used once, else None."""
    if not (isinstance(node, fx.Node) and node.op == "call_function" and node.target is _ATEN.slice.Tensor
            and len(node.users) == 1 and len(node.args) == 4 and node.args[0] is y and node.args[1] == -1):
        return None
    start, end = node.args[2], node.args[3]
    return (start, end) if isinstance(start, int) and isinstance(end, int) else None


def _rows(gm: fx.GraphModule, node: Any) -> Optional[int]:
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part, None)
    return obj.shape[0] if isinstance(obj, torch.Tensor) and obj.dim() == 2 else None


def _match(gm: fx.GraphModule, mul: fx.Node, rule: GatedRule) -> Optional[tuple[fx.Node, int, list[fx.Node]]]:
    """``(linear node, H, nodes to drop)`` if ``mul`` ends ``rule``'s pattern."""
    if not (mul.op == "call_function" and mul.target is _ATEN.mul.Tensor and len(mul.args) == 2 and not mul.kwargs):
        return None
    for act, up in (mul.args, mul.args[::-1]):
        if not (isinstance(act, fx.Node) and act.op == "call_function" and act.target is rule.act
                and len(act.users) == 1 and len(act.args) == 1 and isinstance(up, fx.Node)):
            continue
        gate = act.args[0]
        y = gate.args[0] if isinstance(gate, fx.Node) and gate.args else None
        if not (isinstance(y, fx.Node) and y.op == "call_function" and y.target is rule.linear
                and set(y.users) == {gate, up}):
            continue
        g, u = _slice_of(gate, y), _slice_of(up, y)
        if g is None or u is None:
            continue
        h = g[1] - g[0]
        if g[0] != 0 or u != (h, 2 * h) or h <= 0 or _rows(gm, y.args[1]) != 2 * h:
            continue
        return y, h, [mul, act, gate, up, y]
    return None


def _gated_args(y: fx.Node, rule: GatedRule, h: int) -> tuple:
    schema = rule.linear._schema
    named = {a.name: (y.args[i] if i < len(y.args) else y.kwargs.get(a.name, a.default_value))
             for i, a in enumerate(schema.arguments)}
    named["split"] = h
    return tuple(named[a.name] for a in rule.gated._schema.arguments)


def fuse_gated_mlp(gm: fx.GraphModule, rules: Optional[tuple[GatedRule, ...]] = None) -> dict[fx.Node, str]:
    """Rewrites every match of ``rules`` (:func:`gated_rules` by default) in ``gm.graph`` in place
    (the caller recompiles); returns the rule that fired for each linear node it replaced (nodes
    now erased from the graph)."""
    rules = gated_rules() if rules is None else rules
    fired = {}
    for node in list(gm.graph.nodes):  # a match ends at its mul: the nodes it erases were visited
        for rule in rules:
            found = _match(gm, node, rule)
            if found is None:
                continue
            y, h, dead = found
            with gm.graph.inserting_before(node):
                gated = gm.graph.call_function(rule.gated, _gated_args(y, rule, h))
            gated.meta.update({k: v for k, v in y.meta.items() if k != "val"})
            node.replace_all_uses_with(gated)
            for n in dead:
                gm.graph.erase_node(n)
            fired[y] = rule.name
            break
    return fired
