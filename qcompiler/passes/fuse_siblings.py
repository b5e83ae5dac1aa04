"""Sibling fusion for ``backend="triton"``: linears that read the same activation, one kernel call.

Runs after the pipeline, on the compiled model (the triton backend's ``finalize``), because the
siblings of a Hugging Face Llama are in different regions and only a call shows which regions
are handed the same tensor. Two kinds of group:

* **across regions** (q_proj / k_proj / v_proj: one region each, each ``x -> op -> (y,)``): one
  example call with a pre-hook on every such region records which tensor object each receives;
  the regions handed the same tensor, in call order, form a group. The first one called computes
  the whole group (:class:`~qcompiler.backends.triton.sibling_group.SiblingMember`).
* **inside one region** (gate_proj / up_proj of an MLP region: two ops reading one node): the
  region runs a rewritten copy of its graph::

      %g = weight_only_uint_linear(%x, %gate_qw, ...)       %y = weight_only_uint_linear(%x, %gate_up_qw, ...)
      %u = weight_only_uint_linear(%x, %up_qw, ...)    ->   %g = aten.slice(%y, -1, 0, 5632)
                                                            %u = aten.slice(%y, -1, 5632, 11264)

Either way the weights are concatenated along N into one storage and each member's own tensors
become row-slice views of it (weight bytes do not grow); the region's ``gm`` is left as it was
(saved, exported and reported unfused). Members must agree on everything but the rows
(:data:`~qcompiler.backends.triton.sibling_group.FUSION_RULES`): same op, K, dtypes, kernel
constants, and the same X quantization (outlier columns, threshold); the groups that do not are
kept apart, with the reason, in :class:`SiblingFusion`.

``qcompiler.compile(..., backend="triton", fuse_siblings=False)`` turns it off;
:func:`unfuse_siblings` undoes it on a compiled model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from qcompiler.backends.triton.sibling_group import (FUSION_RULES, SiblingGroup, SiblingMember, fuse_region,
                                                     unfuse_region)
from qcompiler.capture import RegionModule
from qcompiler.spec import get_spec

__all__ = ["FusedGroup", "SiblingFusion", "fuse_siblings", "unfuse_siblings"]


@dataclass(frozen=True)
class FusedGroup:
    layers: tuple[str, ...]
    op: str
    widths: tuple[int, ...]   # each member's N
    across_regions: bool

    def describe(self) -> str:
        where = "across regions" if self.across_regions else "in one region"
        return (f"{', '.join(self.layers)} -> one {self.op} call (N = {' + '.join(map(str, self.widths))}, "
                f"{where})")


@dataclass
class SiblingFusion:
    """What :func:`fuse_siblings` did: the fused groups and, per layer left alone, why."""

    fused: list[FusedGroup] = field(default_factory=list)
    not_fused: dict[str, str] = field(default_factory=dict)  # layer -> reason

    def note(self, report) -> None:
        """Adds a summary note to ``report`` and one note per fused / refused layer row."""
        rows = {r.layer: r for r in report.quantized}
        for g in self.fused:
            for layer in g.layers:
                if layer in rows:
                    rows[layer].notes.append(f"sibling fusion: {g.describe()}")
        for layer, why in self.not_fused.items():
            if layer in rows:
                rows[layer].notes.append(f"sibling fusion: not fused: {why}")
        calls = sum(len(g.layers) - 1 for g in self.fused)
        if not self.fused and not self.not_fused:
            return  # no linears reading one input (GPT-2's c_attn is one linear already)
        report.notes.append(f"sibling fusion: {len(self.fused)} groups fused, {calls} kernel calls fewer per "
                            f"forward; {len(self.not_fused)} reading a shared input left alone "
                            f"(fuse_siblings=False turns it off)")


@dataclass
class _Member:
    region: RegionModule
    node: fx.Node

    @property
    def layer(self) -> str:
        spec = get_spec(self.node)
        return spec.layer if spec is not None else f"{self.region.path}:{self.node.name}"


def _operands(m: _Member) -> dict[str, Any]:
    """The op's arguments by schema name, tensors read from the region's graph module."""
    schema = m.node.target._schema
    out = {}
    for i, arg in enumerate(schema.arguments):
        v = m.node.args[i] if i < len(m.node.args) else m.node.kwargs.get(arg.name, arg.default_value)
        if isinstance(v, fx.Node):
            v = _attr(m.region.gm, v.target) if v.op == "get_attr" else v
        out[arg.name] = v
    return out


def _attr(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and a.device == b.device and (a is b or torch.equal(a, b)))
    return a == b


def _mismatch(lead: _Member, other: _Member) -> str | None:
    """Why ``other`` cannot share ``lead``'s fused call, or None."""
    if other.node.target is not lead.node.target:
        return f"runs {_op_name(other.node)}, its sibling {lead.layer} {_op_name(lead.node)}"
    rule = FUSION_RULES[lead.node.target]
    a, b = _operands(lead), _operands(other)
    for name in sorted(rule.absent):
        if a[name] is not None or b[name] is not None:
            return (f"'{name}' is set (double-quantized NF4: a per-tensor absmax offset each), which one "
                    f"fused call cannot take")
    for name in sorted(rule.shared):
        if not _same(a[name], b[name]):
            return f"its '{name}' differs from {lead.layer}'s: X is not quantized the same way for both"
    for name in sorted(rule.rows):
        x, y = a[name], b[name]
        if (x is None) != (y is None):
            return f"'{name}' is None in one of {lead.layer} and {other.layer} only"
        if x is not None and (x.dtype != y.dtype or x.shape[1:] != y.shape[1:] or x.device != y.device):
            return f"'{name}' has another dtype or shape than {lead.layer}'s (K or group size differ)"
    return None


def _rows(m: _Member) -> dict[str, torch.Tensor]:
    rule = FUSION_RULES[m.node.target]
    ops = _operands(m)
    out = {name: ops[name] for name in rule.rows if isinstance(ops[name], torch.Tensor)}
    n = {t.shape[0] for t in out.values()}
    if len(n) != 1:
        raise ValueError(f"{m.layer}: row operands disagree on N: {sorted(n)}")
    return out


def _set_tensor(gm: nn.Module, target: str, t: torch.Tensor) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(t, requires_grad=False)
    elif name in owner._buffers:
        owner._buffers[name] = t
    else:
        object.__setattr__(owner, name, t)


def _concat(members: list[_Member]) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """Concatenates the row operands along N; each member's own become views of the result."""
    per = [_rows(m) for m in members]
    widths = [next(iter(r.values())).shape[0] for r in per]
    bounds, start = [], 0
    for w in widths:
        bounds.append((start, start + w))
        start += w
    fused = {name: torch.cat([r[name] for r in per], 0) for name in per[0]}
    for m, (s, e) in zip(members, bounds):
        schema = m.node.target._schema
        for i, arg in enumerate(schema.arguments):
            if arg.name in fused and i < len(m.node.args) and isinstance(m.node.args[i], fx.Node):
                _set_tensor(m.region.gm, m.node.args[i].target, fused[arg.name][s:e])
    return fused, bounds


def _op_name(node: fx.Node) -> str:
    return node.target.overloadpacket.__name__


def _linear_region(region: nn.Module) -> fx.Node | None:
    """The op of a region that is just ``x -> one fusable op -> (y,)``, else None."""
    if not isinstance(region, RegionModule) or region._out_spec is None or not region._positional:
        return None
    nodes = list(region.gm.graph.nodes)
    phs = [n for n in nodes if n.op == "placeholder"]
    ops = [n for n in nodes if n.op == "call_function"]
    out = nodes[-1]
    if len(phs) != 1 or len(ops) != 1 or ops[0].target not in FUSION_RULES or ops[0].args[0] is not phs[0]:
        return None
    if any(n.op not in ("placeholder", "get_attr", "call_function", "output") for n in nodes):
        return None
    return ops[0] if out.args == ((ops[0],),) else None


def _shared_input_groups(qm, example) -> list[list[_Member]]:
    """Single-linear regions grouped by the tensor object they were handed in one example call."""
    linear = {id(r.module): (r.module, n) for r in qm.program.regions if (n := _linear_region(r.module)) is not None}
    seen: dict[int, tuple[torch.Tensor, list[_Member]]] = {}
    called: set[int] = set()

    def pre(module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        if id(module) in called or type(x) is not torch.Tensor:  # noqa: E721 - plain tensors only
            return
        called.add(id(module))
        seen.setdefault(id(x), (x, []))[1].append(_Member(*linear[id(module)]))

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m, _ in linear.values()]
    try:
        with torch.no_grad():
            qm(*example[0], **example[1])
    finally:
        for h in handles:
            h.remove()
    return [members for _, members in seen.values() if len(members) > 1]


def _in_region_groups(region: nn.Module) -> list[list[_Member]]:
    if not isinstance(region, RegionModule) or region._out_spec is None or _linear_region(region) is not None:
        return []
    by_x: dict[fx.Node, list[_Member]] = {}
    for n in region.gm.graph.nodes:
        if n.op == "call_function" and n.target in FUSION_RULES and isinstance(n.args[0], fx.Node):
            by_x.setdefault(n.args[0], []).append(_Member(region, n))
    return [ms for ms in by_x.values() if len(ms) > 1]


def _partition(members: list[_Member], result: SiblingFusion) -> list[list[_Member]]:
    """Splits a candidate group into sets that can share one call (the first member leads)."""
    sets: list[list[_Member]] = []
    for m in members:
        for s in sets:
            why = _mismatch(s[0], m)
            if why is None:
                s.append(m)
                break
        else:
            sets.append([m])
    for s in sets:
        if len(s) == 1:
            others = [o for o in members if o is not s[0]]
            result.not_fused[s[0].layer] = _mismatch(others[0], s[0]) or "no sibling it could share a call with"
    return [s for s in sets if len(s) > 1]


def _fuse_across(members: list[_Member]) -> FusedGroup:
    fused, bounds = _concat(members)
    lead = members[0]
    schema = lead.node.target._schema
    ops = _operands(lead)
    args, tensors = [], {}
    for i, arg in enumerate(schema.arguments):
        v = fused.get(arg.name, ops[arg.name])
        if isinstance(v, torch.Tensor):
            tensors[i] = v
        args.append(None if isinstance(v, (torch.Tensor, fx.Node)) else v)  # x (a Node) comes per call
    group = SiblingGroup(lead.node.target, args, tensors, bounds)
    for i, m in enumerate(members):
        fuse_region(m.region, SiblingMember(group, i, m.region.gm), group)
    return FusedGroup(tuple(m.layer for m in members), _op_name(lead.node),
                      tuple(e - s for s, e in bounds), True)


class _RegionGraphs:
    """The rewritten graph of a region (``.regions``: what ``_apply`` un-fuses as one)."""

    def __init__(self):
        self.regions: list[nn.Module] = []


def _fuse_within(region: RegionModule, groups: list[list[_Member]]) -> list[FusedGroup]:
    plans = [(g, *_concat(g)) for g in groups]  # members' tensors become views before the copy
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(region.gm.graph, env)
    graph.output(out)
    fast = fx.GraphModule(region.gm, graph)
    done = []
    for members, fused, bounds in plans:
        first = env[members[0].node]
        with graph.inserting_before(first):
            args = list(first.args)
            schema = first.target._schema
            for i, arg in enumerate(schema.arguments):
                if arg.name in fused and i < len(args):
                    name = f"_qc_sibling_{first.name}_{arg.name}"
                    fast.register_buffer(name, fused[arg.name])
                    args[i] = graph.get_attr(name)
            y = graph.call_function(first.target, tuple(args), dict(first.kwargs))
        y.meta.update({k: v for k, v in first.meta.items() if k != "val"})
        for m, (s, e) in zip(members, bounds):
            node = env[m.node]
            with graph.inserting_before(node):
                part = graph.call_function(torch.ops.aten.slice.Tensor, (y, -1, s, e))
            node.replace_all_uses_with(part)
            graph.erase_node(node)
        done.append(FusedGroup(tuple(m.layer for m in members), _op_name(first),
                               tuple(e - s for s, e in bounds), False))
    graph.eliminate_dead_code()
    used = {n.target for n in graph.nodes if n.op == "get_attr"}
    for name in [k for k in list(fast._buffers) + list(fast._parameters) if k not in used]:
        fast._buffers.pop(name, None)
        fast._parameters.pop(name, None)
    fast.recompile()
    fuse_region(region, fast, _RegionGraphs())
    return done


def fuse_siblings(qm, example: tuple[tuple, dict]) -> SiblingFusion:
    """Fuses the sibling linears of ``qm`` (a triton-compiled QuantizedModel) in place, finding the
    cross-region groups with one call of ``example`` (``(args, kwargs)``); returns what it did."""
    result = SiblingFusion()
    for members in _shared_input_groups(qm, example):
        for s in _partition(members, result):
            result.fused.append(_fuse_across(s))
    for region in qm.program.regions:
        groups = [s for g in _in_region_groups(region.module) for s in _partition(g, result)]
        if groups:
            result.fused.extend(_fuse_within(region.module, groups))
    return result


def unfuse_siblings(qm) -> int:
    """Every region back on its own graph (weights stay views: same values, same bytes); returns how
    many regions were fused."""
    n = 0
    for region in qm.program.regions:
        if getattr(region.module, "_qc_fast", None) is not None:
            n += 1
        unfuse_region(region.module)
    return n

