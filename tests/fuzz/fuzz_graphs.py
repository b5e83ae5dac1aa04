"""Small random graphs for the fuzz tests: a description (``GraphSpec``), the hypothesis strategy
that draws one, the ``nn.Module`` it stands for, and its input data.

A graph is a list of ops over numbered nodes (node 0 is the input ``x [rows, in_features]``, op i
makes node i + 1): ``linear`` (any earlier node; two linears on one node = a shared input),
``relu`` and ``add`` (two nodes of one width: a branch that joins). The output is the
concatenation of every node nothing reads, so side branches stay live. Inputs are N(0, 1) with
the chosen columns scaled x20 (LLM.int8()'s outlier features): none, some or all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

__all__ = ["Op", "GraphSpec", "graph_specs", "FuzzGraph", "make_inputs", "OUTLIER_SCALE", "COVERAGE"]

OUTLIER_SCALE = 20.0
ROWS = (1, 2, 3, 5, 8, 17, 20)  # M <= 16 and M > 16: the Triton lowering switches kernels there


@dataclass(frozen=True)
class Op:
    kind: str                 # "linear" | "relu" | "add"
    srcs: tuple[int, ...]     # node numbers read
    out: int = 0              # linear: output features
    bias: bool = True


@dataclass(frozen=True)
class GraphSpec:
    rows: int                       # tokens per calibration batch
    in_features: int
    ops: tuple[Op, ...]
    outlier_cols: tuple[int, ...]
    seed: int
    batch: int = 0                  # 0: inputs [rows, K]; else [batch, rows, K]
    eval_rows: int = 0              # rows of the extra (not calibration) batch; 0: rows
    zero_row: bool = False          # the first token of every batch is all zeros (scale of 0)

    def widths(self) -> list[int]:
        """Feature width of every node."""
        w = [self.in_features]
        for op in self.ops:
            w.append(op.out if op.kind == "linear" else w[op.srcs[0]])
        return w

    def leaves(self) -> list[int]:
        """Nodes no op reads, in order: their concatenation is the output."""
        read = {s for op in self.ops for s in op.srcs}
        return [i for i in range(1, len(self.ops) + 1) if i not in read]


@st.composite
def graph_specs(draw, max_ops: int = 4, max_features: int = 40) -> GraphSpec:
    k = draw(st.integers(1, max_features))
    ops: list[Op] = [Op("linear", (0,), draw(st.integers(1, 33)), draw(st.booleans()))]
    widths = [k, ops[0].out]
    for _ in range(draw(st.integers(0, max_ops - 1))):
        kind = draw(st.sampled_from(["linear", "linear", "relu", "add"]))
        n = len(widths)
        pairs = [(a, b) for a in range(1, n) for b in range(a + 1, n) if widths[a] == widths[b]]
        if kind == "add" and pairs:
            op = Op("add", draw(st.sampled_from(pairs)))
        elif kind == "relu":
            op = Op("relu", (draw(st.integers(1, n - 1)),))
        else:
            op = Op("linear", (draw(st.integers(0, n - 1)),), draw(st.integers(1, 33)), draw(st.booleans()))
        ops.append(op)
        widths.append(op.out if op.kind == "linear" else widths[op.srcs[0]])
    cols = draw(st.one_of(st.just(()), st.just(tuple(range(k))),
                          st.lists(st.integers(0, k - 1), unique=True, max_size=k).map(lambda c: tuple(sorted(c)))))
    return GraphSpec(draw(st.sampled_from(ROWS)), k, tuple(ops), cols, draw(st.integers(0, 2**16)),
                     draw(st.sampled_from([0, 0, 2])), draw(st.sampled_from([0, 0, *ROWS])), draw(st.booleans()))


class FuzzGraph(nn.Module):
    """The module a ``GraphSpec`` describes; weights ~ N(0, 1/K), biases ~ N(0, 0.1^2)."""

    def __init__(self, spec: GraphSpec):
        super().__init__()
        self.spec = spec
        g = torch.Generator().manual_seed(spec.seed)
        widths = spec.widths()
        self.linears = nn.ModuleList()
        for op in spec.ops:
            if op.kind != "linear":
                continue
            k = widths[op.srcs[0]]
            lin = nn.Linear(k, op.out, bias=op.bias)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(op.out, k, generator=g) / k ** 0.5)
                if op.bias:
                    lin.bias.copy_(torch.randn(op.out, generator=g) * 0.1)
            self.linears.append(lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes, li = [x], 0
        for op in self.spec.ops:
            if op.kind == "linear":
                nodes.append(self.linears[li](nodes[op.srcs[0]]))
                li += 1
            elif op.kind == "relu":
                nodes.append(torch.relu(nodes[op.srcs[0]]))
            else:
                nodes.append(nodes[op.srcs[0]] + nodes[op.srcs[1]])
        leaves = [nodes[i] for i in self.spec.leaves()]
        return leaves[0] if len(leaves) == 1 else torch.cat(leaves, dim=-1)


def make_inputs(spec: GraphSpec, n: int, dtype: torch.dtype = torch.float32, rows: int = 0) -> list[torch.Tensor]:
    """``n`` batches ``[(batch,) rows, in_features]``: N(0, 1), the outlier columns x20."""
    g = torch.Generator().manual_seed(spec.seed + 1 + rows)
    lead = ((spec.batch,) if spec.batch else ()) + (rows or spec.rows,)
    out = []
    for _ in range(n):
        x = torch.randn(*lead, spec.in_features, generator=g)
        if spec.outlier_cols:
            x[..., list(spec.outlier_cols)] *= OUTLIER_SCALE
        if spec.zero_row:
            x[..., 0, :] = 0
        out.append(x.to(dtype))
    return out


# Hand-picked cases every backend runs besides the drawn ones, so each shape of graph is covered
# even at a handful of examples (hypothesis' first draws are the simplest graphs).
COVERAGE = {
    # chain, relu, a node read by two linears (shared input) whose outputs join (branch + add), a
    # second linear on x itself; odd K and N; some outlier columns; M > 16 (Triton's int8 GEMM path)
    "branchy": GraphSpec(17, 13, (Op("linear", (0,), 11), Op("relu", (1,)), Op("linear", (2,), 7, False),
                                  Op("linear", (2,), 7), Op("add", (3, 4)), Op("linear", (0,), 5)),
                         (2, 9), 1),
    # every input column an outlier (nothing left to quantize in X); no bias, then bias
    "all-outliers": GraphSpec(3, 6, (Op("linear", (0,), 9, False), Op("linear", (1,), 3)), tuple(range(6)), 2),
    # K = 21 = 8 + 8 + 5: ragged last group for group_size / block_size 8; no outliers; [2, 5, K]
    # inputs, then a single-token call (decode after prefill)
    "ragged-groups": GraphSpec(5, 21, (Op("linear", (0,), 15), Op("linear", (0,), 4, False)), (), 3, 2, 1),
}
