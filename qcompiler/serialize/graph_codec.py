"""An fx graph as JSON and back, with no code from the file ever run.

Saving writes every node (name, op, target, tagged args, qcompiler's ``node.meta`` entries).
Loading rebuilds the graph on top of a *template*: the graph module re-captured from the base
model, which supplies the submodules, the pytree calling convention and the Python callables of
the original graph. A call target in the file resolves only to

* a registered operator, ``torch.ops.<namespace>.<op>.<overload>`` (aten, qcompiler, backends);
* a function of the ``operator`` module (``getitem``, ...);
* a Python callable that the re-captured template graph itself calls.

Anything else is refused, so a tampered file cannot make ``load`` call arbitrary functions.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from qcompiler.serialize.errors import LoadError, SaveError
from qcompiler.serialize.values import class_name, decode_arg, encode_arg, from_json, resolve_class, to_json
from qcompiler.graph.snapshot import qualified_target

__all__ = ["encode_graph", "decode_graph", "META_PREFIX"]

# node.meta entries under keys with this prefix (spec, layer name) are saved; the rest (fake
# values, stack traces) are taken from the re-captured graph where the node is unchanged.
META_PREFIX = "qcompiler."

_FIXED_TARGET_OPS = ("placeholder", "output", "get_attr", "call_module", "call_method")


def _encode_target(node: fx.Node) -> Any:
    t = node.target
    if node.op in _FIXED_TARGET_OPS:
        return t
    if isinstance(t, torch._ops.OpOverload):
        return {"op": t._schema.name, "overload": t._overloadname}
    if isinstance(t, torch._ops.OpOverloadPacket):
        return {"packet": t._qualified_op_name}
    if isinstance(t, torch._ops.HigherOrderOperator):
        return {"higher_order": t.name()}
    if callable(t):
        return {"python": qualified_target(node)}
    raise SaveError(f"node '{node.name}' has target {t!r}, which cannot be saved")


def _encode_meta(node: fx.Node) -> dict[str, Any]:
    out = {}
    for key, value in node.meta.items():
        if not key.startswith(META_PREFIX):
            continue
        try:
            if value is None or isinstance(value, (str, int, float, bool)):
                out[key] = {"value": value}
            else:
                out[key] = {"class": class_name(value), "value": to_json(value)}
        except TypeError as e:
            raise SaveError(f"node '{node.name}': meta['{key}'] cannot be saved: {e}",
                            hint="keep qcompiler.* node meta to dataclasses of plain values") from e
    return out


def encode_graph(graph: fx.Graph) -> list[dict[str, Any]]:
    """Every node of ``graph`` as a JSON-able dict, in graph order."""
    nodes = []
    for node in graph.nodes:
        try:
            entry = {"name": node.name, "op": node.op, "target": _encode_target(node),
                     "args": encode_arg(node.args), "kwargs": encode_arg(node.kwargs)}
        except SaveError as e:
            raise SaveError(f"node '{node.name}' ({node.op} {qualified_target(node)}): {e.message}",
                            hint="new ops must be torch.library custom ops (torch.ops.<ns>.<op>)") from None
        meta = _encode_meta(node)
        if meta:
            entry["meta"] = meta
        nodes.append(entry)
    return nodes


def _resolve_op(qualified: str, overload: str | None) -> Any:
    ns, sep, name = qualified.partition("::")
    if not sep or not ns.isidentifier() or not name.isidentifier():
        raise LoadError(f"malformed operator name {qualified!r}")
    try:
        packet = getattr(getattr(torch.ops, ns), name)
        target = packet if overload is None else getattr(packet, overload)
    except (AttributeError, RuntimeError):
        hint = ("import the module that registers it (a backend: qcompiler.backends.get_backend(name))"
                if ns != "aten" else "this torch build does not have it: use the torch version that saved it")
        raise LoadError(f"operator {qualified}{'.' + overload if overload else ''} is not registered",
                        hint=hint) from None
    want = torch._ops.OpOverloadPacket if overload is None else torch._ops.OpOverload
    if not isinstance(target, want):
        raise LoadError(f"{qualified} does not name an operator")
    return target


def _python_targets(template: fx.Graph) -> dict[str, Any]:
    allowed = {f"_operator.{n}": getattr(operator, n) for n in dir(operator) if not n.startswith("_")}
    for node in template.nodes:
        if node.op == "call_method":
            allowed[node.target] = node.target
        if node.op == "call_function" and not isinstance(node.target, (torch._ops.OpOverload,
                                                                       torch._ops.OpOverloadPacket)):
            allowed[qualified_target(node)] = node.target
    return allowed


def _decode_target(entry: dict[str, Any], python: dict[str, Any]) -> Any:
    t = entry["target"]
    if entry["op"] in _FIXED_TARGET_OPS:
        if not isinstance(t, str):
            raise LoadError(f"node '{entry['name']}': target must be a string")
        if entry["op"] == "call_method" and t.startswith("_") and t not in python:
            raise LoadError(f"node '{entry['name']}' calls private method {t!r}",
                            hint="the file was changed after it was written")
        return t
    if not isinstance(t, dict) or len(t) not in (1, 2):
        raise LoadError(f"node '{entry['name']}': malformed target {t!r}")
    if "op" in t:
        return _resolve_op(t["op"], t.get("overload") or "default")
    if "packet" in t:
        return _resolve_op(t["packet"], None)
    if "higher_order" in t:
        hop = getattr(torch.ops.higher_order, str(t["higher_order"]), None)
        if not isinstance(hop, torch._ops.HigherOrderOperator):
            raise LoadError(f"node '{entry['name']}': unknown higher-order op {t['higher_order']!r}")
        return hop
    if "python" in t:
        if t["python"] not in python:
            raise LoadError(f"node '{entry['name']}' calls Python function {t['python']!r}, which the "
                            "re-captured model does not call", hint="the file was changed, the base "
                            "model's code differs from the one the model was saved with, or (loading "
                            "without the float model) the graph needs it: pass it, load(dir, model)")
        return python[t["python"]]
    raise LoadError(f"node '{entry['name']}': malformed target {t!r}")


def _decode_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, item in meta.items():
        if not key.startswith(META_PREFIX):
            raise LoadError(f"unexpected node meta key {key!r}")
        if "class" in item:
            cls = resolve_class(item["class"])
            out[key] = from_json(cls, item["value"])
        else:
            out[key] = item["value"]
    return out


def decode_graph(nodes: list[dict[str, Any]], template: fx.GraphModule | None) -> fx.Graph:
    """Rebuilds the saved graph; calling convention, submodules and Python callables come from
    ``template`` (the re-captured region), whose unchanged nodes also lend their meta.

    Without a template (``load(dir)`` with no float model) the graph is called positionally, as
    compile leaves it, and may call registered operators and ``operator`` functions only."""
    if template is None:
        python = _python_targets(fx.Graph())
        old: dict[str, fx.Node] = {}
        graph = fx.Graph()
    else:
        python = _python_targets(template.graph)
        old = {n.name: n for n in template.graph.nodes}
        graph = fx.Graph(owning_module=template)
        graph._codegen = template.graph._codegen
    made: dict[str, fx.Node] = {}
    for entry in nodes:
        name = entry.get("name")
        try:
            if entry["op"] not in ("placeholder", "output", "get_attr", "call_module", "call_method",
                                   "call_function"):
                raise LoadError(f"unknown node kind {entry['op']!r}")
            target = _decode_target(entry, python)
            args = decode_arg(entry["args"], made)
            kwargs = decode_arg(entry["kwargs"], made)
        except (KeyError, ValueError, TypeError) as e:
            raise LoadError(f"node {name!r} of the saved graph cannot be read: {e}",
                            hint="the file was changed after it was written") from None
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise LoadError(f"node {name!r}: args must be a tuple and kwargs a dict")
        node = graph.create_node(entry["op"], target, args, kwargs, name=name)
        if node.name != name:
            raise LoadError(f"node name {name!r} appears twice in the saved graph")
        prev = old.get(name)
        if prev is not None and prev.op == node.op and prev.target == node.target:
            node.meta.update({k: v for k, v in prev.meta.items() if not k.startswith(META_PREFIX)})
        node.meta.update(_decode_meta(entry.get("meta", {})))
        made[name] = node
    return graph
