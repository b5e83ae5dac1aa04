"""Where can a per-channel rescaling of a linear's input be absorbed? A graph analysis.

SmoothQuant (and AWQ) rewrite ``y = x @ W.T`` as ``y = (x / s) @ (W * s).T``: the columns of W
are multiplied by ``s`` and x is divided by it. Dividing x costs nothing when the op producing x
can absorb ``1 / s`` into its own parameters, and when every other reader of x would not notice.
:func:`find_scale_fold` walks up from x and answers with a :class:`ScaleFold`:

``norm``
    x comes from ``aten.layer_norm`` with an affine weight (the weight and bias are divided by
    s), or from ``mul(h, w)`` with a constant ``[K]`` vector ``w`` (the decomposed RMSNorm of
    Hugging Face models: ``weight * hidden.to(dtype)``; w is divided by s).
``linear``
    x comes from another linear (the rows of its weight and its bias are divided by s).
``mul``
    nothing can absorb it: an explicit ``x * (1 / s)`` is inserted. ``reason`` says why.

On the way up the walk passes through ops that commute with a per-channel scale of the last dim
(dtype casts, clones, views that keep the last dim, ``relu`` since s > 0, ``mul`` by a scalar or
by another tensor whose last dim matches), and requires that every intermediate result is read only by the next node of
the walk (or by shape queries) - otherwise another consumer would see the scaled values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import fx

from qcompiler.pass_manager import Analysis, PassContext, Region
from qcompiler.graph.nodes import add_buffer, get_attr_value, is_linear, linear_parts, resolve_weight
from qcompiler.spec import get_spec

__all__ = ["FoldKind", "ScaleFold", "ScaleFoldAnalysis", "find_scale_fold", "divide_input", "scale_weight_columns",
           "linear_groups"]

_aten = torch.ops.aten
_LAYER_NORM = {_aten.layer_norm.default}
_MUL = {_aten.mul.Tensor}
# Unary ops with f(x * c) = f(x) * c for a per-channel c along the last dim.
_CAST_LIKE = {_aten._to_copy.default, _aten.to.dtype, _aten.to.dtype_layout, _aten.to.device, _aten.clone.default,
              _aten.contiguous.default, _aten.alias.default, _aten.detach.default, _aten.dropout.default}
# Positively homogeneous: relu(x * c) = relu(x) * c for c > 0 (smoothing factors are > 0).
_POSITIVE_HOMOGENEOUS = {_aten.relu.default, _aten.leaky_relu.default}
_VIEWS = {_aten.view.default, _aten.reshape.default, _aten._unsafe_view.default, _aten.unsqueeze.default,
          _aten.flatten.using_ints}
# Readers that only look at the shape.
_SHAPE_ONLY = {_aten.sym_size.int, _aten.sym_size.default, _aten.sym_numel.default, _aten.sym_stride.int}


class FoldKind(enum.Enum):
    NORM = "norm"
    LINEAR = "linear"
    MUL = "mul"


@dataclass(frozen=True)
class ScaleFold:
    kind: FoldKind
    target: fx.Node | None = None  # the op whose parameters absorb 1/s (None for MUL)
    reason: str = ""               # MUL only: why nothing upstream could absorb it


def _last_dim(node) -> str | None:
    """The size of ``node``'s last dim as text (``"384"``, or ``"s2"`` when it is symbolic)."""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return str(val.shape[-1]) if isinstance(val, torch.Tensor) and val.dim() else None


def _shape_only(user: fx.Node) -> bool:
    return (user.op == "call_function" and user.target in _SHAPE_ONLY) or \
        (user.op == "call_module" and user.target == "_guards_fn")


def _other_readers(node: fx.Node, allowed: set[fx.Node]) -> list[fx.Node]:
    return [u for u in node.users if u not in allowed and not _shape_only(u)]


def _const_vector(gm: fx.GraphModule, node, k: int) -> bool:
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return False
    t = get_attr_value(gm, node.target)
    return isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == k and t.is_floating_point()


def _as_target(gm: fx.GraphModule, node: fx.Node, k: int) -> ScaleFold | None:
    """``node`` itself can absorb 1/s in its parameters."""
    if node.op != "call_function":
        return None
    if node.target in _LAYER_NORM:
        args = list(node.args) + [None] * (4 - len(node.args))
        w, b = args[2], args[3]
        if _const_vector(gm, w, k) and (b is None or _const_vector(gm, b, k)):
            return ScaleFold(FoldKind.NORM, node)
        return None
    if node.target in _MUL and any(_const_vector(gm, a, k) for a in node.args[:2]):
        return ScaleFold(FoldKind.NORM, node)
    if is_linear(node):
        _, w, b = linear_parts(node)
        resolved = resolve_weight(gm, w)
        if resolved is not None and resolved[0].shape[0] == k and (b is None or _const_vector(gm, b, k)):
            return ScaleFold(FoldKind.LINEAR, node)
    return None


def _walk(gm: fx.GraphModule, node: fx.Node, allowed: set[fx.Node], k: int, kdim: str | None,
          depth: int = 0) -> ScaleFold:
    """``kdim``: x's last dim as text; a node keeps the channels where its last dim is the same."""
    others = _other_readers(node, allowed)
    if others:
        return ScaleFold(FoldKind.MUL, reason=f"'{node.name}' is also read by '{others[0].name}'")
    if node.op == "placeholder":
        return ScaleFold(FoldKind.MUL, reason=f"'{node.name}' is an input of the captured region")
    target = _as_target(gm, node, k)
    if target is not None:
        return target
    if depth > 16 or node.op != "call_function":
        return ScaleFold(FoldKind.MUL, reason=f"'{node.name}' ({node.op}) cannot absorb a scale")
    src = node.args[0] if node.args else None
    if node.target in _CAST_LIKE or node.target in _POSITIVE_HOMOGENEOUS or (node.target in _VIEWS and kdim is not None and
                                     _last_dim(src) == kdim == _last_dim(node)):
        if isinstance(src, fx.Node):
            return _walk(gm, src, {node}, k, kdim, depth + 1)
    if node.target in _MUL and len(node.args) == 2 and kdim is not None:
        candidates = [a for a in node.args if isinstance(a, fx.Node) and _last_dim(a) == kdim]
        reason = ""
        for a in candidates:
            fold = _walk(gm, a, {node}, k, kdim, depth + 1)
            if fold.kind is not FoldKind.MUL:
                return fold
            reason = reason or fold.reason
        if candidates:
            return ScaleFold(FoldKind.MUL, reason=reason)
    name = getattr(node.target, "__name__", str(node.target))
    return ScaleFold(FoldKind.MUL, reason=f"'{node.name}' ({name}) does not commute with a per-channel scale")


def find_scale_fold(gm: fx.GraphModule, x: fx.Node, consumers: list[fx.Node], fold: bool = True) -> ScaleFold:
    """Where ``x`` (the input of the linears ``consumers``) can be divided by a per-channel s."""
    k = get_spec(consumers[0]).in_features
    if not fold:
        return ScaleFold(FoldKind.MUL, reason="folding turned off (fold=false)")
    return _walk(gm, x, set(consumers), k, _last_dim(x))


def linear_groups(gm: fx.GraphModule) -> dict[fx.Node, list[fx.Node]]:
    """Annotated linears grouped by the node they read (q/k/v share one input)."""
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if is_linear(node) and get_spec(node) is not None:
            groups.setdefault(linear_parts(node)[0], []).append(node)
    return groups


class ScaleFoldAnalysis(Analysis):
    """``{input node name: ScaleFold}`` for every group of annotated linears in a region."""

    @classmethod
    def compute(cls, region: Region, ctx: PassContext, fold: bool = True):
        gm = region.gm
        return {x.name: find_scale_fold(gm, x, lins, fold) for x, lins in linear_groups(gm).items()}


# ------------------------------------------------------------------------------ rewrites

def _replace_const(gm: fx.GraphModule, user: fx.Node, old: fx.Node, value: torch.Tensor, base: str) -> None:
    """``user`` reads a new buffer holding ``value`` instead of ``old`` (which others may share)."""
    with gm.graph.inserting_before(user):
        new = gm.graph.get_attr(add_buffer(gm, base, value.contiguous()))
    user.replace_input_with(old, new)


def divide_input(gm: fx.GraphModule, fold: ScaleFold, x: fx.Node, consumers: list[fx.Node],
                 s: torch.Tensor, base: str) -> None:
    """Makes the consumers read ``x / s`` (s: ``[K]`` float), folded as ``fold`` says."""
    t = fold.target
    if fold.kind is FoldKind.NORM and t.target in _LAYER_NORM:
        for arg in (t.args[2], t.args[3] if len(t.args) > 3 else None):
            if isinstance(arg, fx.Node):
                v = get_attr_value(gm, arg.target)
                _replace_const(gm, t, arg, v / s.to(v.dtype), base + "_norm")
    elif fold.kind is FoldKind.NORM:
        arg = next(a for a in t.args[:2] if isinstance(a, fx.Node) and a.op == "get_attr")
        v = get_attr_value(gm, arg.target)
        _replace_const(gm, t, arg, v / s.to(v.dtype), base + "_norm")
    elif fold.kind is FoldKind.LINEAR:
        _, w_node, b_node = linear_parts(t)
        w, _ = resolve_weight(gm, w_node)
        _replace_const(gm, t, w_node, w.detach() / s.to(w.dtype)[:, None], base + "_rows")
        if isinstance(b_node, fx.Node):
            b = get_attr_value(gm, b_node.target)
            _replace_const(gm, t, b_node, b / s.to(b.dtype), base + "_rows_bias")
    else:
        dtype = resolve_weight(gm, linear_parts(consumers[0])[1])[0].dtype
        first = next(n for n in gm.graph.nodes if n in set(consumers))  # after x, after every placeholder
        with gm.graph.inserting_before(first):
            inv = gm.graph.get_attr(add_buffer(gm, base + "_inv_s", (1.0 / s).to(dtype)))
            scaled = gm.graph.call_function(_aten.mul.Tensor, (x, inv))
        if "val" in x.meta:
            scaled.meta["val"] = x.meta["val"]
        for c in consumers:
            c.replace_input_with(x, scaled)


def scale_weight_columns(gm: fx.GraphModule, linear: fx.Node, s: torch.Tensor, base: str) -> None:
    """``W[:, j] *= s[j]`` for ``linear``, in a new buffer (the old weight may be shared)."""
    _, w_node, _ = linear_parts(linear)
    w, _ = resolve_weight(gm, w_node)
    with gm.graph.inserting_before(linear):
        new = gm.graph.get_attr(add_buffer(gm, base, (w.detach() * s.to(w.dtype)[None, :]).contiguous()))
    linear.replace_input_with(w_node, new)
