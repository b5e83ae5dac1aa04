"""Verifier checks for the weight-only ops (run by ``verify_graph`` between passes when asked).

* every ``weight_only_linear`` / ``nf4_linear`` carries its spec;
* its codes are a uint8 buffer of the width its bit count implies (``ceil(K / 2)`` for 4 bits);
* its scales (absmax) are float32 ``[N, ceil(K / g)]``, from a buffer or from the double-quant op;
* zero points, when present, are uint8 of the scales' shape;
* every buffer the spec names exists.
"""

from __future__ import annotations

import torch
from torch import fx

from qcompiler.errors import VerificationError
from qcompiler.graph.nodes import get_attr_value
from qcompiler.spec import get_spec
import qcompiler.ops  # noqa: F401 - defines the ops named below
from qcompiler.ops.args import DequantizeBlockwiseInt8Args, args_of
from qcompiler.verify.verifier import register_invariant

__all__ = ["check_weight_only_ops"]

_WO = torch.ops.qcompiler.weight_only_linear.default
_NF4 = torch.ops.qcompiler.nf4_linear.default
_DQ = torch.ops.qcompiler.dequantize_blockwise_int8.default


def _fail(node: fx.Node, after: str, msg: str):
    raise VerificationError(f"after '{after}', node '{node.name}': {msg}")


def _buffer(gm, node, consumer, after, what) -> torch.Tensor:
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        _fail(consumer, after, f"{what} must be a buffer (get_attr)")
    return get_attr_value(gm, node.target)


@register_invariant
def check_weight_only_ops(gm: fx.GraphModule, after: str) -> None:
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (_WO, _NF4):
            continue
        spec = get_spec(node)
        if spec is None:
            _fail(node, after, "weight-only matmul without a spec in node.meta")
        n, k = spec.out_features, spec.in_features
        a = args_of(node)
        bits, g, scales = (a.bits, a.group_size, a.scales) if node.target is _WO else (4, a.block_size, a.absmax)
        qweight = _buffer(gm, a.qweight, node, after, "the weight codes")
        width = -(-k // 2) if bits == 4 else k
        if qweight.dtype != torch.uint8 or tuple(qweight.shape) != (n, width):
            _fail(node, after, f"{bits}-bit codes must be uint8 [{n}, {width}], got {qweight.dtype} "
                               f"{tuple(qweight.shape)}")
        groups = -(-k // g)
        if node.target is _NF4 and isinstance(scales, fx.Node) and scales.target is _DQ:
            codes = DequantizeBlockwiseInt8Args.of(scales).q
            shape = tuple(_buffer(gm, codes, scales, after, "the 8-bit absmax codes").shape)
        else:
            t = _buffer(gm, scales, node, after, "the scales")
            if t.dtype != torch.float32:
                _fail(node, after, f"scales must be float32, got {t.dtype}")
            shape = tuple(t.shape)
        if shape != (n, groups):
            _fail(node, after, f"scales must be [{n}, {groups}] for group size {g}, got {shape}")
        if node.target is _WO and a.zeros is not None:
            z = _buffer(gm, a.zeros, node, after, "the zero points")
            if z.dtype != torch.uint8 or tuple(z.shape) != (n, groups):
                _fail(node, after, f"zero points must be uint8 [{n}, {groups}], got {z.dtype} {tuple(z.shape)}")
        if spec.weights is not None:
            for name in spec.weights.buffers():
                if not hasattr(gm, name):
                    _fail(node, after, f"spec names buffer '{name}', which does not exist")
