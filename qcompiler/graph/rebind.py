"""Giving one linear a new weight without touching the tensor it had (which may be shared, e.g.
a language-model head tied to the token embedding)."""

from __future__ import annotations

import torch
from torch import fx

from qcompiler.graph.nodes import add_buffer, linear_parts

__all__ = ["set_linear_weight"]


def set_linear_weight(gm: fx.GraphModule, linear: fx.Node, w: torch.Tensor, base: str) -> str:
    """``linear`` reads ``w [N, K]`` from a new buffer; the old weight operand is left to dce.
    Returns the buffer's name."""
    _, w_node, _ = linear_parts(linear)
    name = add_buffer(gm, base, w.detach().contiguous())
    with gm.graph.inserting_before(linear):
        new = gm.graph.get_attr(name)
    linear.replace_input_with(w_node, new)
    return name
