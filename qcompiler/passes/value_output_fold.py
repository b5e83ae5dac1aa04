"""``o_proj``'s smoothing scale folded into ``v_proj``'s output rows (AutoAWQ's / llm-compressor's
v -> o mapping), where the attention between them allows it.

o_proj reads the attention output, made in eager code: ``out[:, h, d] = sum_t p[t] * v[t, h, d]``
(softmax weights ``p``; rope touches q and k only). A per-channel ``1/s`` on o_proj's input is
then ``1/s`` on v_proj's output rows - but only when channel ``(h, d)`` of o_proj's input is
channel ``(h, d)`` of v: with grouped-query attention one v channel feeds several heads, and
AutoAWQ and llm-compressor skip the mapping there (v_proj's out_features != o_proj's
in_features). Name-based candidates (sibling regions ``<attn>.v_proj`` and ``<attn>.o_proj``) are
kept only if one probe says the model agrees: the calibration call is run once as is and once
with every candidate's v rows divided by a random ``s`` and o columns multiplied by it; if the
outputs differ, no candidate folds and the report says by how much.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from qcompiler.graph.nodes import add_buffer, get_attr_value, is_linear, linear_parts, resolve_weight
from qcompiler.pass_manager import Program, Region
from qcompiler.spec import get_spec

__all__ = ["ValueOutputPair", "find_value_output_pairs", "divide_output_rows"]


@dataclass(frozen=True)
class ValueOutputPair:
    v: Region
    v_linear: str   # node names in each region's graph
    o: Region
    o_linear: str


def _only_linear(region: Region, from_placeholder: bool) -> fx.Node | None:
    lins = [n for n in region.gm.graph.nodes if is_linear(n) and get_spec(n) is not None]
    if len(lins) != 1:
        return None
    x = linear_parts(lins[0])[0]
    readers = [u for u in x.users if not (u.op == "call_module" and u.target == "_guards_fn")] \
        if isinstance(x, fx.Node) else []
    if from_placeholder and not (x.op == "placeholder" and readers == [lins[0]]):
        return None
    return lins[0]


def _node(region: Region, name: str) -> fx.Node:
    return next(n for n in region.gm.graph.nodes if n.name == name)


def _outputs(out) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t.float() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]


def find_value_output_pairs(program: Program, call: tuple[tuple, dict]) -> tuple[list[ValueOutputPair], dict[str, str]]:
    """``(pairs that fold, {o_proj layer: why not})`` for the float program (before any rescaling)."""
    by_path = {r.path: r for r in program.regions}
    pairs, rejected = [], {}
    for path, o in by_path.items():
        if not path.endswith(".o_proj") or path[: -len("o_proj")] + "v_proj" not in by_path:
            continue
        v = by_path[path[: -len("o_proj")] + "v_proj"]
        o_lin, v_lin = _only_linear(o, True), _only_linear(v, False)
        if o_lin is None or v_lin is None:
            continue
        ov, vo = get_spec(o_lin).in_features, get_spec(v_lin).out_features
        if ov != vo:
            rejected[get_spec(o_lin).layer] = (f"v_proj has {vo} outputs, o_proj reads {ov} (grouped-query attention: "
                                               f"one v channel feeds several heads)")
            continue
        pairs.append(ValueOutputPair(v, v_lin.name, o, o_lin.name))
    if not pairs:
        return pairs, rejected
    problem = _probe(program, call, pairs)
    if problem:
        for p in pairs:
            rejected[get_spec(_node(p.o, p.o_linear)).layer] = problem
        return [], rejected
    return pairs, rejected


def _probe(program: Program, call, pairs: list[ValueOutputPair]) -> str:
    """``""`` when dividing v's rows and multiplying o's columns by a random s leaves the model's
    outputs unchanged (float rounding aside); else how much they moved."""
    with torch.no_grad():
        want = _outputs(program.root(*call[0], **call[1]))
        saved = []
        g = torch.Generator().manual_seed(0)
        try:
            for p in pairs:
                v_lin, o_lin = _node(p.v, p.v_linear), _node(p.o, p.o_linear)
                wv, wo = resolve_weight(p.v.gm, linear_parts(v_lin)[1])[0], resolve_weight(p.o.gm, linear_parts(o_lin)[1])[0]
                bv = linear_parts(v_lin)[2]
                bv = get_attr_value(p.v.gm, bv.target) if isinstance(bv, fx.Node) and bv.op == "get_attr" else None
                s = (0.5 + 1.5 * torch.rand(wv.shape[0], generator=g)).to(wv.device)
                for t in (wv, wo) + ((bv,) if bv is not None else ()):
                    saved.append((t, t.detach().clone()))
                wv.data.div_(s.to(wv.dtype)[:, None])
                wo.data.mul_(s.to(wo.dtype)[None, :])
                if bv is not None:
                    bv.data.div_(s.to(bv.dtype))
            got = _outputs(program.root(*call[0], **call[1]))
        finally:
            for t, old in reversed(saved):
                t.data.copy_(old)
    low = any(t.dtype in (torch.float16, torch.bfloat16) for t, _ in saved)
    tol = 3e-2 if low else 1e-4
    err = max(((a - b).norm() / b.norm().clamp_min(1e-12)).item() for a, b in zip(got, want)) if want else 0.0
    if err > tol:
        return (f"dividing v_proj's rows by s and multiplying o_proj's columns by s changed the model's output by "
                f"{err:.2g} (relative): something between them mixes channels")
    return ""


def divide_output_rows(region: Region, linear: str, s: torch.Tensor, base: str) -> None:
    """``W[i, :] /= s[i]`` (and ``b[i] /= s[i]``) for the linear ``linear`` of ``region``: its
    output becomes ``y / s``. New buffers; the old ones are left to dce."""
    gm = region.gm
    node = _node(region, linear)
    _, w_node, b_node = linear_parts(node)
    for old, div in ((w_node, lambda t: t / s.to(t.device, t.dtype)[:, None]),
                     (b_node, lambda t: t / s.to(t.device, t.dtype))):
        if not isinstance(old, fx.Node):
            continue
        value = resolve_weight(gm, old)[0] if old is w_node else get_attr_value(gm, old.target)
        with gm.graph.inserting_before(node):
            new = gm.graph.get_attr(add_buffer(gm, base + ("_rows" if old is w_node else "_rows_bias"),
                                               div(value.detach()).contiguous()))
        node.replace_input_with(old, new)
    gm.recompile()
