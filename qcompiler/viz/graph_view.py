"""The rewritten graph as networkx, DOT, SVG and a standalone HTML page (before | after).

    from qcompiler.viz import graph_view
    graph_view.write_html(qm, "graph.html")             # every region, before and after
    g = graph_view.to_networkx(graph_view.after(qm)[0])  # nx.DiGraph, one node per fx node
    open("g.dot", "w").write(graph_view.to_dot(g))

Nodes are coloured by kind (activation quantization, int8 matmul, weight-only matmul, float
linear, ...; see :data:`qcompiler.graph.snapshot.KINDS`) and labelled with op, output shape and, for
quantized matmuls, the layer, its outlier dims and lowering. Parameters and ``getitem`` nodes are
folded into the nodes that use them (they are listed in the tooltip). The SVG is laid out in pure
Python (:mod:`qcompiler.viz.layout`): no graphviz needed; the DOT text is there for those who
have it.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Sequence

import networkx as nx

from qcompiler.viz.layout import layered_layout
from qcompiler.graph.snapshot import KINDS, GraphSnapshot, NodeInfo, snapshot_graph

__all__ = ["before", "after", "to_networkx", "to_dot", "to_svg", "to_html", "write_html"]

_CHAR_W, _LINE_H, _PAD = 6.6, 13.0, 8.0


def after(qm) -> list[GraphSnapshot]:
    """Snapshots of the compiled graphs, one per region."""
    return [snapshot_graph(r.gm, r.label) for r in qm.program.regions]


def before(qm) -> list[GraphSnapshot | None]:
    """The graphs as captured, before any pass (kept by compile / load in ``qm.record``)."""
    kept = getattr(qm.record, "graphs_before", {}) if getattr(qm, "record", None) is not None else {}
    return [kept.get(r.label) for r in qm.program.regions]


def _op_name(n: NodeInfo) -> str:
    if n.op == "placeholder":
        return f"input {n.name}"
    if n.op == "output":
        return "output"
    t = n.target.split("::")[-1]
    name, _, overload = t.partition(".")
    if n.target.startswith("_operator.") or "." in name:
        name = t.rsplit(".", 1)[-1]
    return name


def _layer_of(n: NodeInfo, consts: dict[str, NodeInfo]) -> str | None:
    if n.layer:
        return n.layer
    for i in n.inputs:  # a float op reading parameters: name it after them (before the passes ran)
        c = consts.get(i)
        if c is not None and c.target.endswith((".weight", ".bias")):
            path = c.target.rsplit(".", 1)[0]
            return path[len("inner."):] if path.startswith("inner.") else path
    return None


def _spec_lines(spec: dict[str, Any]) -> list[str]:
    out = [spec.get("op_name", "")]
    mode = spec.get("outliers")
    idx = spec.get("outlier_idx") or []
    if mode == "static" and idx:
        out.append(f"outlier dims {len(idx)}: " + ",".join(map(str, idx[:6])) + (",..." if len(idx) > 6 else ""))
    elif mode == "dynamic":
        out.append(f"outliers found per call, |x| > {spec.get('threshold')}")
    if spec.get("lowering") and spec["lowering"] != "reference":
        out.append(f"lowering: {spec['lowering']}")
    return [s for s in out if s]


def to_networkx(snap: GraphSnapshot, *, fold: bool = True) -> nx.DiGraph:
    """One node per fx node (parameters and getitems folded into their users when ``fold``).
    Node attributes: ``kind``, ``label`` (list of lines), ``tooltip``, ``layer``, ``color``."""
    g = nx.DiGraph(region=snap.region)
    by_name = {n.name: n for n in snap.nodes}
    consts = {n.name: n for n in snap.nodes if n.kind == "constant"}
    getitems = {n.name: n for n in snap.nodes if n.target == "_operator.getitem"} if fold else {}

    def source(name: str) -> tuple[str, str | None]:
        n = by_name[name]
        if n.name in getitems and n.inputs:
            return n.inputs[0], n.name
        return name, None

    for n in snap.nodes:
        if fold and (n.name in consts or n.name in getitems):
            continue
        params = [consts[i] for i in n.inputs if i in consts] if fold else []
        layer = _layer_of(n, consts)
        label = [_op_name(n)]
        if n.shape:
            label.append(n.shape)
        if n.spec:
            label.append(layer or "")
            label += _spec_lines(n.spec)
        elif layer and n.kind in ("float-linear", "other"):
            label.append(layer)
        if params:
            label.append(f"+{len(params)} param{'s' if len(params) > 1 else ''}")
        tip = [f"{n.name} = {n.op} {n.target}", f"output: {n.shape or '?'}"]
        tip += [f"reads {p.target}: {p.shape}" for p in params]
        if n.spec:
            tip += [f"{k}: {v}" for k, v in n.spec.items() if k not in ("weights",) and v not in (None, [], "")]
        g.add_node(n.name, kind=n.kind, label=[s for s in label if s], tooltip="\n".join(tip), layer=layer,
                   color=KINDS.get(n.kind, KINDS["other"])[0])
    for n in snap.nodes:
        if n.name not in g:
            continue
        for i in n.inputs:
            if i not in by_name or (fold and i in consts):
                continue
            src, via = source(i)
            if src in g and src != n.name:
                g.add_edge(src, n.name, label=None)
    return g


def _size(g: nx.DiGraph, n: str) -> tuple[float, float]:
    lines = g.nodes[n]["label"]
    return (max(len(s) for s in lines) * _CHAR_W + 2 * _PAD, len(lines) * _LINE_H + _PAD)


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def to_dot(g: nx.DiGraph, title: str = "") -> str:
    """Graphviz DOT text; each quantized layer is a filled cluster."""
    ids = {n: f"n{i}" for i, n in enumerate(g.nodes)}
    q = lambda s: '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    out = [f"digraph {q(title or g.graph.get('region', 'graph'))} {{", "  rankdir=TB;",
           '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
           '  edge [fontsize=8, color="#777777"];']
    clusters: dict[str, list[str]] = {}
    for n, d in g.nodes(data=True):
        if d["kind"] not in ("other", "layout", "io", "float-linear") and d.get("layer"):
            clusters.setdefault(d["layer"], []).append(n)
    in_cluster = {n for ns in clusters.values() for n in ns}
    for n, d in g.nodes(data=True):
        if n not in in_cluster:
            out.append(f"  {ids[n]} [label={q(chr(10).join(d['label']))}, fillcolor={q(d['color'])}, "
                       f"tooltip={q(d['tooltip'])}];")
    for i, (layer, ns) in enumerate(clusters.items()):
        out.append(f"  subgraph cluster_{i} {{ label={q(layer)}; style=\"rounded,filled\"; "
                   f"fillcolor=\"#fff4ef\"; color=\"#f4766c\";")
        for n in ns:
            d = g.nodes[n]
            out.append(f"    {ids[n]} [label={q(chr(10).join(d['label']))}, fillcolor={q(d['color'])}, "
                       f"tooltip={q(d['tooltip'])}];")
        out.append("  }")
    for a, b, d in g.edges(data=True):
        out.append(f"  {ids[a]} -> {ids[b]}" + (f" [label={q(d['label'])}]" if d.get("label") else "") + ";")
    out.append("}")
    return "\n".join(out) + "\n"


def to_svg(g: nx.DiGraph, title: str = "", *, css_class: str = "qc-graph") -> str:
    """A self-contained SVG of ``g`` (laid out in Python). Each node is a ``<g class="qc-node">``
    with ``data-name``, ``data-kind``, ``data-layer`` and a ``<title>`` tooltip."""
    boxes = layered_layout(g, {n: _size(g, n) for n in g.nodes})
    margin = 16.0
    width = max((b.x + b.w / 2 for b in boxes.values()), default=100) + 2 * margin
    height = max((b.y + b.h for b in boxes.values()), default=40) + 2 * margin + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="{css_class}" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">',
             '<defs><marker id="qc-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#888"/></marker></defs>',
             f'<text x="{margin}" y="{margin}" font-size="12" font-weight="bold">{_esc(title)}</text>',
             f'<g transform="translate({margin},{margin + 14})">']
    for a, b, d in g.edges(data=True):
        s, t = boxes[a], boxes[b]
        x1, y1, x2, y2 = s.x, s.y + s.h, t.x, t.y
        span = max(0.0, y2 - y1)
        bend = 0.0 if span < 120 else min(160.0, span / 8)
        # Long edges (masks, residuals) would hide the local structure: draw them faint.
        opacity = 1.0 if span < 200 else max(0.15, 200 / span)
        parts.append(f'<path class="qc-edge" d="M {x1:.1f} {y1:.1f} C {x1 + bend:.1f} {y1 + span / 3:.1f}, '
                     f'{x2 + bend:.1f} {y2 - span / 3:.1f}, {x2:.1f} {y2:.1f}" fill="none" stroke="#888" '
                     f'stroke-opacity="{opacity:.2f}" stroke-width="1" marker-end="url(#qc-arrow)"/>')
    for n, d in g.nodes(data=True):
        bx = boxes[n]
        left = bx.x - bx.w / 2
        stroke = "#c0392b" if d["kind"] in ("int8-matmul", "weight-only") else "#666"
        parts.append(f'<g class="qc-node" data-name="{_esc(n)}" data-kind="{_esc(d["kind"])}" '
                     f'data-layer="{_esc(d.get("layer") or "")}"><title>{_esc(d["tooltip"])}</title>'
                     f'<rect x="{left:.1f}" y="{bx.y:.1f}" width="{bx.w:.1f}" height="{bx.h:.1f}" rx="5" '
                     f'fill="{d["color"]}" stroke="{stroke}" stroke-width="1"/>')
        for i, line in enumerate(d["label"]):
            weight = ' font-weight="bold"' if i == 0 else ""
            parts.append(f'<text x="{bx.x:.1f}" y="{bx.y + _PAD / 2 + (i + 0.8) * _LINE_H:.1f}" font-size="11" '
                         f'text-anchor="middle"{weight}>{_esc(line)}</text>')
        parts.append("</g>")
    parts.append("</g></svg>")
    return "\n".join(parts)


def _legend() -> str:
    items = "".join(f'<span class="qc-key"><i style="background:{c}"></i>{_esc(k)}: {_esc(v)}</span>'
                    for k, (c, v) in KINDS.items())
    return f'<div class="qc-legend">{items}</div>'


def to_html(views: Sequence[tuple[str, GraphSnapshot | None, GraphSnapshot]], title: str = "qcompiler graph",
            subtitle: str = "") -> str:
    """A standalone page (inline SVG, CSS and JS; nothing fetched): for each region the graph as
    captured and as compiled, side by side, with a region picker, search, zoom and node details."""
    from qcompiler.viz._page import PAGE_CSS, PAGE_JS

    regions = []
    for i, (label, snap_before, snap_after) in enumerate(views):
        after_g = to_networkx(snap_after)
        panes = []
        if snap_before is not None:
            before_g = to_networkx(snap_before)
            panes.append(("before: as captured", before_g, to_svg(before_g, f"{label} - before")))
        panes.append(("after: compiled", after_g, to_svg(after_g, f"{label} - after")))
        counts = ", ".join(f"{k} {v}" for k, v in sorted(snap_after.counts().items()) if k not in ("constant",))
        body = "".join(f'<section class="qc-pane"><h2>{_esc(name)} <small>({gr.number_of_nodes()} nodes)</small>'
                       f'</h2><div class="qc-view">{svg}</div></section>' for name, gr, svg in panes)
        regions.append(f'<div class="qc-region" data-region="{i}" data-label="{_esc(label)}"'
                       f'{" hidden" if i else ""}><p class="qc-counts">{_esc(counts)}</p>'
                       f'<div class="qc-panes">{body}</div></div>')
    options = "".join(f'<option value="{i}">{_esc(label)}</option>' for i, (label, _, _) in enumerate(views))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{PAGE_CSS}</style></head>\n"
            f'<body data-qc-ready="0"><header><h1>{_esc(title)}</h1><p>{_esc(subtitle)}</p>'
            f'<div class="qc-tools"><label>region <select id="qc-region">{options}</select></label> '
            '<input id="qc-search" type="search" placeholder="find node / layer"> '
            '<button id="qc-zoom-in">+</button><button id="qc-zoom-out">&minus;</button>'
            '<button id="qc-fit">fit width</button></div>'
            f"{_legend()}</header>\n<main>{''.join(regions)}</main>\n"
            '<aside id="qc-details">click a node for details</aside><pre id="qc-errors"></pre>\n'
            f"<script>{PAGE_JS}</script></body></html>\n")


def write_html(qm, path: str | os.PathLike, title: str | None = None) -> Path:
    """Writes :func:`to_html` for every region of ``qm`` to ``path``."""
    views = [(s.region, b, s) for s, b in zip(after(qm), before(qm))]
    rep = qm.report()
    sub = (f"scheme {rep.scheme}, backend {rep.backend}; {len(rep.quantized)} of {len(rep.layers)} linear layers "
           f"quantized; pipeline: {rep.pipeline}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_html(views, title or "qcompiler graph view", sub), encoding="utf-8")
    return out
