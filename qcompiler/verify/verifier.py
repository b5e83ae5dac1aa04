"""Graph verifier run between passes when asked: ``graph.lint()`` plus qcompiler's invariants.

* no calibration observer survives outside the calibrate pass;
* every quantized matmul reads its int8 activation and scale from an activation-quantize op, an
  int8 weight and a float32 scale from buffers, and carries its spec;
* the outlier operands come in pairs (both or neither);
* every buffer a spec names exists on the graph module.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from qcompiler.errors import VerificationError
import qcompiler.ops  # noqa: F401 - the checks below name torch.ops.qcompiler.*
from qcompiler.ops.args import args_of
from qcompiler.graph.nodes import get_attr_value
from qcompiler.graph.observer import ActivationObserver
from qcompiler.spec import get_spec

__all__ = ["verify_graph", "register_invariant"]

_INVARIANTS = []


def register_invariant(fn):
    """``fn(gm) -> None`` raising VerificationError; run by verify_graph. Backends add their own."""
    _INVARIANTS.append(fn)
    return fn


def _fail(node: fx.Node, after: str, msg: str):
    raise VerificationError(f"after '{after}', node '{node.name}': {msg}")


def _const(gm, node, after, what, dtype=None):
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        _fail(node if isinstance(node, fx.Node) else node, after, f"{what} must be a buffer (get_attr)")
    t = get_attr_value(gm, node.target)
    if dtype is not None and t.dtype != dtype:
        raise VerificationError(f"after '{after}': {what} '{node.target}' is {t.dtype}, expected {dtype}")
    return t


def _from_quantize(node, after, consumer, index):
    ok = (isinstance(node, fx.Node) and node.op == "call_function" and node.target is operator.getitem
          and node.args[1] == index and isinstance(node.args[0], fx.Node)
          and node.args[0].op == "call_function")
    if not ok:
        _fail(consumer, after, f"operand {index} must come from an activation-quantize op")


def verify_graph(gm: fx.GraphModule, after: str = "?") -> None:
    try:
        gm.graph.lint()
    except Exception as e:  # noqa: BLE001 - lint raises plain RuntimeErrors
        raise VerificationError(f"after '{after}': graph.lint() failed: {e}") from e
    int8_linear = torch.ops.qcompiler.int8_linear.default
    dyn_linear = torch.ops.qcompiler.int8_linear_dynamic_outlier.default
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ActivationObserver):
            _fail(node, after, "a calibration observer was left in the graph")
        if node.op == "call_function" and node.target in (int8_linear, dyn_linear):
            spec = get_spec(node)
            if spec is None:
                _fail(node, after, "quantized matmul without a spec in node.meta")
            a = args_of(node)  # both ops name their int8 operands xq, x_scale, wq, w_scale
            _from_quantize(a.xq, after, node, 0)
            _from_quantize(a.x_scale, after, node, 1)
            wq = _const(gm, a.wq, after, "int8 weight", torch.int8)
            ws = _const(gm, a.w_scale, after, "weight scale", torch.float32)
            if ws.numel() not in (1, wq.shape[0]):
                _fail(node, after, f"weight scale has {ws.numel()} values for {wq.shape[0]} output channels")
            if node.target is int8_linear and (a.x_outliers is None) != (a.w_outliers is None):
                _fail(node, after, "outlier activations and outlier weights must come together")
        spec = get_spec(node)
        if spec is not None and spec.weights is not None:
            for name in (spec.weights.qweight, spec.weights.scale, spec.weights.outlier_weight,
                         spec.weights.outlier_idx):
                if name is not None and not hasattr(gm, name):
                    _fail(node, after, f"spec names buffer '{name}', which does not exist")
    for inv in _INVARIANTS:
        inv(gm, after)
