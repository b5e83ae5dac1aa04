"""``label-onnx-lowering``: writes into each layer's spec which ONNX operators it becomes, so
``qm.report()`` says it (``LinearQuantSpec.lowering``). The graph itself is not changed.

    int8_linear                    onnx:MatMulInteger[(u8 x u8)] (+ fp outliers: Gather/MatMul, n cols)
    int8_linear_dynamic_outlier    onnx:MatMulInteger + fp outliers: NonZero/Gather (dynamic)
    weight_only_linear             ort:MatMulNBits(8-bit, block 128)   when the target uses it
                                   onnx:dequantize+MatMul              otherwise
                                   (+ fp outliers: Gather/MatMul, n cols, after lower-ort-matmul-nbits)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import fx

from qcompiler.backends.onnxruntime.matmul_nbits import FOLDED_KEY
from qcompiler.backends.onnxruntime.translations import MATMUL_NBITS_BLOCKS
from qcompiler.graph.nodes import get_attr_value
from qcompiler.ops.args import Int8LinearArgs, QuantizeRowwiseArgs, WeightOnlyLinearArgs
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.spec import SPEC_KEY, get_spec

__all__ = ["LabelOnnxLowering", "LABELS"]

_ops = torch.ops.qcompiler


def _outlier_cols(gm: fx.GraphModule, node: fx.Node) -> int:
    """Columns of the static outlier product added to ``node``'s output (0 if none)."""
    for user in node.users:
        if user.target is torch.ops.aten.add.Tensor:
            mm = user.args[1]
            if isinstance(mm, fx.Node) and mm.target is torch.ops.aten.matmul.default:
                return get_attr_value(gm, mm.args[0].args[2].target).numel()
    return 0


def _int8_linear(gm: fx.GraphModule, node: fx.Node, p: "LabelOnnxLowering") -> str:
    mm = "onnx:MatMulInteger" + ("(u8 x u8)" if p.u8_activations else "")
    x_outliers = Int8LinearArgs.of(node).x_outliers  # getitem(quantize_rowwise(x, outlier_idx), 2)
    if x_outliers is None:
        return mm
    n = get_attr_value(gm, QuantizeRowwiseArgs.of(x_outliers.args[0]).outlier_idx.target).numel()
    return f"{mm} + fp outliers: Gather/MatMul ({n} cols)"


def _dynamic(gm: fx.GraphModule, node: fx.Node, p: "LabelOnnxLowering") -> str:
    mm = "onnx:MatMulInteger" + ("(u8 x u8)" if p.u8_activations else "")
    return f"{mm} + fp outliers: NonZero/Gather (dynamic)"


def _weight_only(gm: fx.GraphModule, node: fx.Node, p: "LabelOnnxLowering") -> str:
    a = WeightOnlyLinearArgs.of(node)
    bits, group = a.bits, a.group_size
    label = (f"ort:MatMulNBits({bits}-bit, block {group})" if p.matmul_nbits and bits in (4, 8) and group in MATMUL_NBITS_BLOCKS
             else "onnx:dequantize+MatMul")
    n, folded = _outlier_cols(gm, node), node.meta.get(FOLDED_KEY, 0)
    return label + (f" + fp outliers: Gather/MatMul ({n} cols)" if n else "") + \
        (f" ({folded} outlier dims folded in)" if folded else "")


# op -> (graph module, node, the pass and its options) -> label
LABELS: dict[object, Callable[[fx.GraphModule, fx.Node, "LabelOnnxLowering"], str]] = {
    _ops.int8_linear.default: _int8_linear,
    _ops.int8_linear_dynamic_outlier.default: _dynamic,
    _ops.weight_only_linear.default: _weight_only,
}


@register_pass("label-onnx-lowering")
@dataclass(frozen=True)
class LabelOnnxLowering(GraphPass):
    matmul_nbits: bool = False    # the target runs weight-only linears as com.microsoft.MatMulNBits
    u8_activations: bool = False  # int8 matmuls take X as uint8 (+128, zero point 128)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        for node in gm.graph.nodes:
            spec = get_spec(node)
            label = LABELS.get(node.target) if node.op == "call_function" else None
            if spec is not None and label is not None:
                node.meta[SPEC_KEY] = replace(spec, lowering=label(gm, node, self))
        return PassResult(gm, False, preserved=PassResult.ALL)
