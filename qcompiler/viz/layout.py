"""A layered (Sugiyama-style) layout of a DAG in pure Python, so the graph view needs no graphviz.

Layers are longest paths from the inputs; the order inside a layer comes from a few barycenter
sweeps; x positions follow the mean position of each node's predecessors, pushed apart so boxes
do not overlap. Good enough for the mostly-chain graphs of transformer blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

__all__ = ["Box", "layered_layout"]


@dataclass
class Box:
    x: float      # centre
    y: float      # top
    w: float
    h: float


def _layers(g: nx.DiGraph) -> dict[str, int]:
    layer: dict[str, int] = {}
    for n in nx.topological_sort(g):
        preds = [layer[p] for p in g.predecessors(n)]
        layer[n] = max(preds) + 1 if preds else 0
    # Pull nodes with no predecessors (inputs, constants) down to just above their first user.
    for n in list(layer):
        if g.in_degree(n) == 0 and g.out_degree(n):
            layer[n] = max(0, min(layer[s] for s in g.successors(n)) - 1)
    return layer


def _order(g: nx.DiGraph, rows: list[list[str]], sweeps: int = 4) -> None:
    pos = {n: i for row in rows for i, n in enumerate(row)}
    for s in range(sweeps):
        down = s % 2 == 0
        seq = rows[1:] if down else rows[-2::-1]
        for row in seq:
            def bary(n: str) -> float:
                nb = list(g.predecessors(n) if down else g.successors(n))
                return sum(pos[m] for m in nb) / len(nb) if nb else pos[n]
            row.sort(key=bary)
            for i, n in enumerate(row):
                pos[n] = i


def layered_layout(g: nx.DiGraph, sizes: dict[str, tuple[float, float]], *, hgap: float = 24,
                   vgap: float = 34) -> dict[str, Box]:
    """Boxes for every node of ``g`` given ``sizes[n] = (width, height)``."""
    if g.number_of_nodes() == 0:
        return {}
    layer = _layers(g)
    nrows = max(layer.values()) + 1
    rows: list[list[str]] = [[] for _ in range(nrows)]
    for n in g.nodes:  # insertion order is graph order: a good first guess
        rows[layer[n]].append(n)
    _order(g, rows)
    x: dict[str, float] = {}
    for row in rows:
        want = []
        for n in row:
            preds = [x[p] for p in g.predecessors(n) if p in x]
            want.append(sum(preds) / len(preds) if preds else None)
        # Nodes without placed predecessors go next to their neighbours in the row.
        cursor = 0.0
        placed = []
        for n, w in zip(row, want):
            half = sizes[n][0] / 2
            target = w if w is not None else cursor + half
            left = max(target - half, cursor)
            placed.append(left + half)
            cursor = left + 2 * half + hgap
        # Shift the row left by the mean overshoot so pushes do not drift everything right.
        shifts = [p - w for p, w in zip(placed, want) if w is not None]
        shift = sum(shifts) / len(shifts) / 2 if shifts else 0.0
        for n, p in zip(row, placed):
            x[n] = p - shift
    heights = [max(sizes[n][1] for n in row) if row else 0 for row in rows]
    y, tops = 0.0, []
    for h in heights:
        tops.append(y)
        y += h + vgap
    xmin = min(x[n] - sizes[n][0] / 2 for n in g.nodes)
    return {n: Box(x[n] - xmin, tops[layer[n]] + (heights[layer[n]] - sizes[n][1]) / 2, *sizes[n]) for n in g.nodes}
