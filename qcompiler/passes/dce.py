"""``dce``: dead-code elimination, then the parameters and buffers nothing reads any more (the
float weights replaced by int8 ones) are dropped, so the memory saving is real."""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass

__all__ = ["DeadCodeElimination"]


@register_pass("dce")
@dataclass(frozen=True)
class DeadCodeElimination(GraphPass):
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = gm.graph.eliminate_dead_code()
        used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
        used_modules = {n.target for n in gm.graph.nodes if n.op == "call_module"}
        for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
            if name in used or any(name.startswith(m + ".") for m in used_modules):
                continue
            owner_path, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            if attr in owner._parameters:
                del owner._parameters[attr]
            elif attr in owner._buffers:
                del owner._buffers[attr]
            modified = True
        return PassResult(gm, modified)
