"""Compiled graphs follow ``model.half()`` / ``.to(torch.bfloat16)`` / ``.float()``.

Most quantized ops return the dtype of their float input, but the int8 matmuls take theirs as an
argument (``int8_linear(..., out_dtype)``: their inputs are int8), fixed at compile time. After
``qm.half()`` they would keep returning float32 for a float16 input; :func:`follow_dtype_change`
rewrites every such ``out_dtype`` the way the module's own ``_apply`` changed its tensors.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import fx

__all__ = ["follow_dtype_change", "OUT_DTYPE_ARG"]

OUT_DTYPE_ARG = "out_dtype"  # the schema argument naming an op's output dtype


def _out_dtype_index(target) -> int | None:
    schema = getattr(target, "_schema", None)
    names = [a.name for a in schema.arguments] if schema is not None else []
    return names.index(OUT_DTYPE_ARG) if OUT_DTYPE_ARG in names else None


def follow_dtype_change(gm: fx.GraphModule, fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Applies ``fn`` (what ``nn.Module._apply`` applied to the tensors) to each op's ``out_dtype``:
    float32 -> float16 for ``.half()``, unchanged for ``.to("cuda")``. Returns whether any changed."""
    changed, seen = False, {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        i = _out_dtype_index(node.target)
        if i is None or i >= len(node.args) or not isinstance(node.args[i], torch.dtype):
            continue
        old = node.args[i]
        if old not in seen:  # what fn does to a tensor of that dtype (device moves leave it)
            seen[old] = fn(torch.empty(0, dtype=old)).dtype
        if seen[old] != old:
            node.update_arg(i, seen[old])
            changed = True
    if changed:
        gm.recompile()
    return changed
