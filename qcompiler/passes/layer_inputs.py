"""Looking at what the linears of one region read, for algorithms that need more than the
calibrate pass's statistics (GPTQ's Hessians, AWQ's rows).

:func:`tap_inputs` inserts identity ``call_module`` nodes on the input of chosen groups of
linears, runs calls through the region and removes the nodes again, so no later pass ever sees
one. With ``stop=True`` the forward is abandoned right after the (single) tapped input has been
seen: the rest of the region is not computed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import fx, nn

from qcompiler.pass_manager import Region
from qcompiler.graph.nodes import is_linear, linear_parts
from qcompiler.spec import get_spec

__all__ = ["InputTap", "tap_inputs", "linear_groups_in_order"]


class _StopForward(Exception):
    pass


class InputTap(nn.Module):
    """Identity that hands what flows through it to ``fn``."""

    def __init__(self, fn: Callable[[torch.Tensor], None], stop: bool):
        super().__init__()
        self.fn = fn
        self.stop = stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fn(x.detach())
        if self.stop:
            raise _StopForward
        return x


def linear_groups_in_order(gm: fx.GraphModule, keep: Callable[[fx.Node], bool]) -> list[tuple[fx.Node, list[fx.Node]]]:
    """Annotated linears for which ``keep`` holds, grouped by the node they read, in graph order."""
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if is_linear(node) and get_spec(node) is not None and keep(node):
            groups.setdefault(linear_parts(node)[0], []).append(node)
    return list(groups.items())


def tap_inputs(region: Region, calls: Sequence[tuple[tuple, dict]],
               taps: Sequence[tuple[fx.Node, list[fx.Node], Callable[[torch.Tensor], None]]],
               stop: bool = False) -> None:
    """For each ``(x, linears, fn)``: ``fn`` sees the tensor ``x`` that ``linears`` read, on every call."""
    if stop and len(taps) != 1:
        raise ValueError("stop=True needs exactly one tap")
    gm = region.gm
    inserted: list[tuple[fx.Node, fx.Node, list[fx.Node], str]] = []
    try:
        for i, (x, linears, fn) in enumerate(taps):
            name = f"_qc_tap_{i}"
            gm.add_submodule(name, InputTap(fn, stop))
            with gm.graph.inserting_after(x):
                tap = gm.graph.call_module(name, (x,))
            for lin in linears:
                lin.replace_input_with(x, tap)
            inserted.append((x, tap, linears, name))
        gm.recompile()
        with torch.no_grad():
            for args, kwargs in calls:
                try:
                    region.module(*args, **kwargs)
                except _StopForward:
                    pass
    finally:
        for x, tap, linears, name in inserted:
            for lin in linears:
                lin.replace_input_with(tap, x)
            gm.graph.erase_node(tap)
            gm.delete_submodule(name)
        gm.recompile()
