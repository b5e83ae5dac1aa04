"""A plain, JSON-able picture of an fx graph: what the graph view draws and what a saved model
keeps of the graph as it was captured (before any pass ran).

Each node gets a *kind* from a small rule table (activation quantization, int8 matmul,
weight-only matmul, float linear, ...), a shape string and, for quantized nodes, a summary of
their :class:`~qcompiler.spec.LinearQuantSpec`. Building a snapshot never changes the graph.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from qcompiler.spec import LAYER_KEY, SPEC_KEY

__all__ = ["NodeInfo", "GraphSnapshot", "snapshot_graph", "node_kind", "KIND_RULES", "KINDS"]

# (kind, pattern on the node's qualified target), first match wins. New ops from new schemes fall
# into the generic "qcompiler-op" kind until a rule names them.
KIND_RULES: list[tuple[str, str]] = [
    ("quantize", r"^qcompiler\w*::(quantize|dequantize)\w*"),
    ("smooth", r"^qcompiler\w*::\w*smooth\w*"),
    ("weight-only", r"^qcompiler\w*::\w*(weight_only|nf4|w4|uint|int4)\w*"),
    ("int8-matmul", r"^qcompiler\w*::\w*(int8|outlier)\w*"),
    ("qcompiler-op", r"^qcompiler\w*::"),
    ("float-linear", r"^aten::(linear|mm|addmm|matmul|bmm)\b"),
    ("layout", r"^(aten::(view|reshape|transpose|permute|unsqueeze|squeeze|expand|slice|select|"
               r"contiguous|t|clone|alias|detach|_assert\w*|sym_size)\b|_operator\.getitem$)"),
]

# kind -> (fill colour, one-line meaning), used by the graph view's legend.
KINDS: dict[str, tuple[str, str]] = {
    "io": ("#d9d9d9", "graph inputs and outputs"),
    "constant": ("#f2f2f2", "parameters and buffers"),
    "quantize": ("#ffd27f", "activation quantization (int8 + scales, outlier columns split off)"),
    "int8-matmul": ("#f4766c", "int8 x int8 matmul, int32 accumulate, dequantize (+ fp16 outliers)"),
    "weight-only": ("#b38cd9", "weight-only low-bit matmul (int4/NF4 codes dequantized on the fly)"),
    "smooth": ("#7fc9a5", "SmoothQuant activation scaling"),
    "qcompiler-op": ("#f7a8d0", "other qcompiler op"),
    "float-linear": ("#7fb2e5", "linear layer left in float"),
    "layout": ("#ffffff", "views, reshapes, getitem"),
    "other": ("#eef3f8", "other float ops"),
}


@dataclass
class NodeInfo:
    name: str
    op: str                           # placeholder, call_function, get_attr, output, ...
    target: str                       # qualified op name, attribute path or module path
    kind: str                         # a key of KINDS
    inputs: list[str]                 # names of the nodes it reads, in argument order
    shape: str | None = None          # "f32[s0, s1, 384]"; a tuple output: "(i8[..], f32[..])"
    layer: str | None = None          # the model layer it implements (quantized or float linear)
    spec: dict[str, Any] | None = None  # LinearQuantSpec fields, JSON-able


@dataclass
class GraphSnapshot:
    region: str
    nodes: list[NodeInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GraphSnapshot":
        return cls(d["region"], [NodeInfo(**n) for n in d["nodes"]])

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.kind] = out.get(n.kind, 0) + 1
        return out


def qualified_target(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    if isinstance(t, torch._ops.OpOverload):
        return f"{t.name()}.{t._overloadname}" if "." not in t.name() else t.name()
    if isinstance(t, torch._ops.OpOverloadPacket):
        return t._qualified_op_name
    mod = getattr(t, "__module__", None) or ""
    return f"{mod}.{getattr(t, '__qualname__', getattr(t, '__name__', repr(t)))}".lstrip(".")


def node_kind(node: fx.Node) -> str:
    if node.op in ("placeholder", "output"):
        return "io"
    if node.op == "get_attr":
        return "constant"
    target = qualified_target(node)
    for kind, pattern in KIND_RULES:
        if re.search(pattern, target):
            return kind
    return "other"


_DTYPE_SHORT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
                torch.int8: "i8", torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64", torch.bool: "b"}


def _shape_text(v: Any) -> str | None:
    if isinstance(v, torch.Tensor):
        return f"{_DTYPE_SHORT.get(v.dtype, str(v.dtype).replace('torch.', ''))}[{', '.join(str(d) for d in v.shape)}]"
    if isinstance(v, (tuple, list)) and v and all(isinstance(x, torch.Tensor) or x is None for x in v):
        return "(" + ", ".join(_shape_text(x) or "None" for x in v) + ")"
    if isinstance(v, (torch.SymInt, int)):
        return f"int {v}"
    return None


def _jsonable(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def spec_summary(spec: Any) -> dict[str, Any]:
    out = _jsonable(spec)
    if hasattr(spec, "op_name"):
        out["op_name"] = spec.op_name
    return out


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph on fake tensors and keeps every node's output, without touching node.meta."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def _fake_shapes(gm: fx.GraphModule) -> dict[str, Any]:
    """Best effort: node outputs on fake inputs taken from the placeholders' ``val`` (export
    records them). Rewritten nodes have no ``val`` of their own; this fills them in."""
    from torch._guards import detect_fake_mode

    vals = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    if not vals or any(v is None for v in vals):
        return {}
    mode = detect_fake_mode(vals)
    if mode is None:
        return {}
    rec = _ShapeRecorder(gm)
    try:
        with mode:
            rec.run(*vals)
    except Exception:  # noqa: BLE001 - shapes are decoration; a graph we cannot fake-run has none
        pass
    return rec.values


def snapshot_graph(gm: fx.GraphModule, region: str = "<model>", *, infer_shapes: bool = True) -> GraphSnapshot:
    """The nodes of ``gm`` with kinds, shapes and spec summaries."""
    missing = any("val" not in n.meta for n in gm.graph.nodes if n.op not in ("get_attr", "output", "call_module"))
    inferred = _fake_shapes(gm) if infer_shapes and missing else {}
    snap = GraphSnapshot(region)
    for node in gm.graph.nodes:
        inputs = [a.name for a in node.all_input_nodes]
        if node.op == "get_attr":
            try:
                obj = gm
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                shape = _shape_text(obj)
            except AttributeError:
                shape = None
        else:
            val = node.meta["val"] if "val" in node.meta else inferred.get(node.name)
            shape = _shape_text(val)
        spec = node.meta.get(SPEC_KEY)
        layer = getattr(spec, "layer", None) or node.meta.get(LAYER_KEY)
        snap.nodes.append(NodeInfo(node.name, node.op, qualified_target(node), node_kind(node), inputs, shape,
                                   layer if node.op == "call_function" else None,
                                   spec_summary(spec) if spec is not None and node.op == "call_function" else None))
    return snap
