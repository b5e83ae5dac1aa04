"""Small helpers shared by passes: finding linears, resolving their weights, naming layers."""

from __future__ import annotations

import torch
from torch import fx

__all__ = ["LINEAR", "is_linear", "is_transpose", "linear_parts", "resolve_weight", "layer_name", "get_attr_value",
           "add_buffer"]

LINEAR = torch.ops.aten.linear.default

# Ops that only re-view a constant weight; followed when resolving what a linear multiplies by.
_TRANSPOSE = {torch.ops.aten.t.default, torch.ops.aten.numpy_T.default}
_PASS_THROUGH = {torch.ops.aten.detach.default, torch.ops.aten.contiguous.default,
                 torch.ops.aten.alias.default}


def is_linear(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is LINEAR


def linear_parts(node: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node | None]:
    """``(x, weight, bias)`` of a canonical linear node."""
    args = list(node.args) + [None] * (3 - len(node.args))
    bias = node.kwargs.get("bias", args[2])
    return args[0], args[1], bias


def get_attr_value(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def is_transpose(node: fx.Node) -> bool:
    """``W.t()`` in any spelling: aten ops (export) or tensor methods (symbolic_trace)."""
    if node.op == "call_method":
        if node.target == "t":
            return True
        if node.target == "transpose":
            return sorted(int(d) % 2 for d in node.args[1:3]) == [0, 1]
        return node.target == "permute" and list(node.args[1:]) in ([1, 0], [[1, 0]], [(1, 0)])
    if node.op != "call_function":
        return False
    if node.target in _TRANSPOSE or node.target is torch.t:
        return True
    if node.target in (torch.ops.aten.transpose.int, torch.transpose):
        return sorted(int(d) % 2 for d in node.args[1:3]) == [0, 1]
    return node.target is torch.ops.aten.permute.default and list(node.args[1]) == [1, 0]


def _is_pass_through(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _PASS_THROUGH) or \
        (node.op == "call_method" and node.target in ("detach", "contiguous"))


def resolve_weight(gm: fx.GraphModule, node: fx.Node | None) -> tuple[torch.Tensor, str] | None:
    """The constant tensor a weight operand stands for, and the attribute it comes from; None
    if it is computed from activations (then the matmul is not a linear layer)."""
    transposed = False
    while isinstance(node, fx.Node) and node.op in ("call_function", "call_method"):
        if is_transpose(node):
            transposed = not transposed
        elif not _is_pass_through(node):
            return None
        node = node.args[0]
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    w = get_attr_value(gm, node.target)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    return (w.t() if transposed else w), node.target


def layer_name(region_path: str, weight_target: str) -> str:
    """``model.layers.0.mlp`` + ``inner.up_proj.weight`` -> ``model.layers.0.mlp.up_proj``."""
    parts = weight_target.split(".")
    if parts and parts[0] == "inner":  # the capture wrapper's attribute
        parts = parts[1:]
    if parts and parts[-1] in ("weight", "w"):
        parts = parts[:-1]
    return ".".join(p for p in [region_path, *parts] if p) or "<model>"


def add_buffer(gm: fx.GraphModule, base: str, value: torch.Tensor) -> str:
    """Registers ``value`` on ``gm`` under a fresh name and returns the name."""
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    gm.register_buffer(name, value)
    return name
