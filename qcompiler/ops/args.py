"""Named arguments of every qcompiler op, read from a graph node: the one place that knows their order.

    a = Int8LinearArgs.of(node)       # node calls torch.ops.qcompiler.int8_linear
    a.x_scale, a.wq, a.bias           # instead of node.args[1], node.args[2], node.args[6]
    a.set_on(node, bias=None)         # rewrite some arguments in place

Each class is a named tuple whose fields are built from the op's registered schema (the Python
signature in ``ops/``), so they cannot drift from it. The outputs of the quantize ops, read with
``operator.getitem``, are named in :data:`QUANTIZE_OUTPUTS`.
"""

from __future__ import annotations

import collections
from typing import Any

import torch
from torch import fx

import qcompiler.ops  # noqa: F401 - defines the quantize, int8 and weight-only ops
import qcompiler.ops.fake_quant  # noqa: F401 - defines the fake-quantize ops

__all__ = ["OpArgs", "args_of", "QUANTIZE_OUTPUTS", "QuantizeRowwiseArgs", "QuantizeRowwiseDynamicArgs",
           "QuantizeTensorwiseArgs", "Int8LinearArgs", "Int8LinearDynamicOutlierArgs", "WeightOnlyLinearArgs",
           "NF4LinearArgs", "DequantizeBlockwiseInt8Args", "FakeQuantizeInt8Args", "FakeQuantizeUintArgs",
           "FakeQuantizeNF4Args"]


class OpArgs:
    """Mixin of the per-op argument tuples; ``op`` is the overload they describe."""

    __slots__ = ()
    op: Any = None

    @classmethod
    def of(cls, node: fx.Node):
        """The arguments of ``node`` (positional or keyword) by name."""
        if node.op != "call_function" or node.target is not cls.op:
            raise TypeError(f"node '{node.name}' calls {node.target}, not {cls.op}")
        rest = [node.kwargs.get(f) for f in cls._fields[len(node.args):]]
        return cls(*node.args, *rest)

    def set_on(self, node: fx.Node, **changes: Any) -> None:
        """Writes these arguments (with ``changes``) back to ``node``, all positional."""
        node.args, node.kwargs = tuple(self._replace(**changes)), {}


_BY_OP: dict[Any, type] = {}


def _args_class(name: str, op) -> type:
    fields = [a.name for a in op._schema.arguments]
    base = collections.namedtuple(f"_{name}", fields)
    cls = type(name, (base, OpArgs), {"__slots__": (), "op": op,
                                       "__doc__": f"Arguments of ``{op}``: {', '.join(fields)}."})
    _BY_OP[op] = cls
    return cls


_qc = torch.ops.qcompiler
QuantizeRowwiseArgs = _args_class("QuantizeRowwiseArgs", _qc.quantize_rowwise.default)
QuantizeRowwiseDynamicArgs = _args_class("QuantizeRowwiseDynamicArgs", _qc.quantize_rowwise_dynamic.default)
QuantizeTensorwiseArgs = _args_class("QuantizeTensorwiseArgs", _qc.quantize_tensorwise.default)
Int8LinearArgs = _args_class("Int8LinearArgs", _qc.int8_linear.default)
Int8LinearDynamicOutlierArgs = _args_class("Int8LinearDynamicOutlierArgs", _qc.int8_linear_dynamic_outlier.default)
WeightOnlyLinearArgs = _args_class("WeightOnlyLinearArgs", _qc.weight_only_linear.default)
NF4LinearArgs = _args_class("NF4LinearArgs", _qc.nf4_linear.default)
DequantizeBlockwiseInt8Args = _args_class("DequantizeBlockwiseInt8Args", _qc.dequantize_blockwise_int8.default)
FakeQuantizeInt8Args = _args_class("FakeQuantizeInt8Args", _qc.fake_quantize_int8.default)
FakeQuantizeUintArgs = _args_class("FakeQuantizeUintArgs", _qc.fake_quantize_uint.default)
FakeQuantizeNF4Args = _args_class("FakeQuantizeNF4Args", _qc.fake_quantize_nf4.default)

# getitem index -> name, for the tuple outputs of the activation-quantize ops.
QUANTIZE_OUTPUTS = {
    _qc.quantize_rowwise.default: ("xq", "x_scale", "x_outliers"),
    _qc.quantize_rowwise_dynamic.default: ("xq", "x_scale", "outlier_mask"),
    _qc.quantize_tensorwise.default: ("xq", "x_scale"),
}


def args_of(node: fx.Node):
    """The named arguments of a node calling a qcompiler op; None for any other node."""
    cls = _BY_OP.get(node.target) if node.op == "call_function" else None
    return cls.of(node) if cls is not None else None
