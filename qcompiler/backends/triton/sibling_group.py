"""The run-time side of sibling fusion: one kernel call for linears that read the same activation.

A Hugging Face Llama calls ``q_proj(h)``, ``k_proj(h)``, ``v_proj(h)`` one after another, each a
region of its own; at batch-1 decode each call costs a GEMV launch of ~5 us, mostly fixed cost.
With their weights concatenated along N (one storage; each member's own weight is a row-slice
view of it, so nothing is stored twice), one call computes the whole group::

    q_proj(h)   # leader: y = op(h, W_qkv), kept with h; returns y[..., 0:Nq]
    k_proj(h)   # same tensor h: returns y[..., Nq:Nq+Nk], no kernel
    v_proj(h)   # the last member to take its slice releases y (and h)
    k_proj(g)   # another input (or called alone): its own graph, on its row-slice of W_qkv

The kept output lives in a plain Python object (:class:`PendingOutput`) that Dynamo traces as a
side effect, so the pattern works in eager mode, under ``torch.cuda.graph`` capture and under
``torch.compile(fullgraph=True)`` with no graph break (once every member has taken its slice the
object is empty again, so a compiled step leaves nothing behind).

Siblings inside one region (``gate_proj`` / ``up_proj`` of an MLP region) need no Python state:
the region runs a rewritten copy of its graph (one fused op, one slice per member), see
``qcompiler.passes.fuse_siblings``. Either way the region's own ``gm`` stays as compiled, so
``qcompiler.save``, the exports and the report see the unfused graph, with weights that are views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx, nn

from qcompiler.capture import RegionModule

__all__ = ["FusionRule", "FUSION_RULES", "PendingOutput", "SiblingGroup", "SiblingMember", "SiblingRegionModule",
           "fuse_region", "unfuse_region"]

_OPS = torch.ops.qcompiler_triton


@dataclass(frozen=True)
class FusionRule:
    """How one lowered op's arguments combine across siblings (by schema argument name).

    ``rows``: tensors with one row per output feature, concatenated along dim 0 (None in every
    member or in none); ``shared``: arguments every member must have equal (the X quantization:
    outlier columns, threshold; the kernel's constants); ``absent``: arguments that must be None
    (a double-quantized NF4 absmax has a per-tensor offset, which one fused call cannot take)."""

    rows: frozenset
    shared: frozenset
    absent: frozenset = frozenset()


FUSION_RULES: dict[Any, FusionRule] = {
    _OPS.weight_only_uint_linear.default: FusionRule(frozenset({"qweight", "scales", "zeros", "bias"}),
                                                     frozenset({"bits", "group_size"})),
    _OPS.weight_only_nf4_linear.default: FusionRule(frozenset({"qweight", "absmax", "bias"}),
                                                    frozenset({"block_size", "absmax_block", "levels", "levels_half"}),
                                                    frozenset({"absmax_scale", "absmax_offset"})),
    _OPS.int8_outlier_linear.default: FusionRule(frozenset({"wq", "w_scale", "w_outliers", "bias"}),
                                                 frozenset({"outlier_idx", "outlier_mask", "act_quant"})),
    _OPS.int8_dynamic_outlier_linear.default: FusionRule(frozenset({"wq", "w_scale", "bias"}),
                                                         frozenset({"threshold", "act_quant"})),
}


class PendingOutput:
    """The leader's fused output, kept (with the input it was computed from) until every member
    has taken its slice. A plain object, not a module: Dynamo replays its attribute writes."""

    def __init__(self):
        self.x: Optional[torch.Tensor] = None
        self.y: Optional[torch.Tensor] = None
        self.version = 0  # x._version when y was computed: an in-place change of x in between shows
        self.taken = 0

    def holds(self, x: torch.Tensor) -> bool:
        """Whether the kept output was computed from ``x`` as it is now. Under Dynamo the version
        is not compared (a traced step has no in-place write between the siblings' calls)."""
        return self.x is x and (torch.compiler.is_compiling() or self.version == x._version)


class SiblingGroup(nn.Module):
    """The fused call of one cross-region group: ``op`` with the concatenated weights (buffers, so
    torch.compile / CUDA graphs treat them as the model's static tensors) and each member's
    output columns. Held by the member regions outside the module tree: ``state_dict`` and
    ``qcompiler.save`` never see it (the members' own buffers are views of the same storage)."""

    def __init__(self, op, args: list, tensor_args: dict[int, torch.Tensor], bounds: list[tuple[int, int]]):
        super().__init__()
        self.op = op
        self._args = args                     # the fused call's arguments; tensors filled from buffers
        self._slots = sorted(tensor_args)
        for i, t in tensor_args.items():
            self.register_buffer(f"arg{i}", t, persistent=False)
        self.bounds = bounds
        self.everyone = (1 << len(bounds)) - 1
        self.pending = PendingOutput()
        self.regions: list[nn.Module] = []    # the member regions, to un-fuse them all at once

    def call(self, x: torch.Tensor) -> torch.Tensor:
        args = list(self._args)
        for i in self._slots:
            args[i] = getattr(self, f"arg{i}")
        args[0] = x
        return self.op(*args)


class SiblingMember(nn.Module):
    """Stands for one member region's graph (``x -> lowered op -> (y,)``) on the fused path."""

    def __init__(self, group: SiblingGroup, index: int, own: fx.GraphModule):
        super().__init__()
        object.__setattr__(self, "group", group)  # shared by the members: not a child of each
        self.index = index
        self.bit = 1 << index
        self.start, self.end = group.bounds[index]
        object.__setattr__(self, "own", own)      # the region's graph: weights are views of the group's

    def forward(self, x: torch.Tensor):
        group, pending = self.group, self.group.pending
        if pending.holds(x):
            y = pending.y
            pending.taken = pending.taken | self.bit
            if pending.taken == group.everyone:  # the last one: nothing stays held
                pending.x = None
                pending.y = None
                pending.taken = 0
            return (y[..., self.start:self.end],)
        if self.index == 0:  # the leader computes the whole group and keeps it for the others
            y = group.call(x)
            pending.x = x
            pending.y = y
            pending.taken = self.bit
            if not torch.compiler.is_compiling():
                pending.version = x._version
            return (y[..., self.start:self.end],)
        return self.own(x)  # another input, or called alone: just its own slice of the weights


class SiblingRegionModule(RegionModule):
    """A region taking part in sibling fusion: the hot path runs ``_qc_fast`` (a
    :class:`SiblingMember`, or a rewritten copy of the graph) instead of ``gm``. Any other call
    shape takes the region's own path. ``.to()`` / ``.half()`` un-fuse the group (the members'
    weights stop being views of one storage)."""

    def forward(self, *args, **kwargs):
        fast = self._qc_fast
        if fast is not None and self._out_spec is not None and self._positional and not kwargs \
                and len(args) == len(self._names) and all(type(a) is torch.Tensor for a in args):
            return self._unflatten(fast(*args))
        return super().forward(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        for group in list(self._qc_groups):
            for region in list(group.regions):
                unfuse_region(region)
        return RegionModule._apply(self, fn, recurse)  # the class may have just changed back


def fuse_region(region: RegionModule, fast: nn.Module, group) -> None:
    """Makes ``region`` run ``fast`` on its hot path; ``group`` (anything with ``.regions``) is
    un-fused as a whole when the region's tensors move."""
    if type(region) is RegionModule:
        region.__class__ = SiblingRegionModule
        object.__setattr__(region, "_qc_groups", [])
    object.__setattr__(region, "_qc_fast", fast)
    region._qc_groups.append(group)
    group.regions.append(region)


def unfuse_region(region: nn.Module) -> None:
    """Back to the region's own graph (its weights stay views: same values, same bytes)."""
    if not isinstance(region, SiblingRegionModule):
        return
    for group in region._qc_groups:
        if region in group.regions:
            group.regions.remove(region)
    for name in ("_qc_fast", "_qc_groups"):
        region.__dict__.pop(name, None)
    region.__class__ = RegionModule
