"""``annotate-weight-format``: say how each annotated linear's weight is stored, for weight-only
schemes. Runs after ``annotate-linears``; sets ``format``, ``bits``, ``group_size``, ``symmetric``
and ``double_quant`` in every spec and makes the activations float (``act=none``). Nothing in the
graph changes; ``quantize-weights`` and ``decompose-matmul`` read the spec.

    annotate-linears{act=none},annotate-weight-format{format=uint,bits=4,group_size=128,symmetric=true}
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from qcompiler.errors import ConfigError
from qcompiler.contracts import (ACT_FLOAT, ACT_INT8, FORMAT_CHOSEN, FORMAT_NF4, FORMAT_UINT, LINEARS_ANNOTATED,
                                 OUTLIERS_DETECTED, WEIGHTS_QUANTIZED, Contract)
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import is_linear
from qcompiler.spec import ActGranularity, WeightFormat, get_spec, update_spec

__all__ = ["AnnotateWeightFormat", "STORED_BITS"]

# Code widths the weight-only ops store: 8 (one per byte) and 4 (two per byte).
STORED_BITS = {WeightFormat.UINT: (4, 8), WeightFormat.NF4: (4,)}


def check_weight_format(fmt: WeightFormat, bits: int, group_size: int, double_quant: bool, where: str) -> None:
    """Raises ConfigError for combinations the weight-only ops cannot store."""
    if fmt not in STORED_BITS:
        raise ConfigError(f"{where}: format must be one of {', '.join(f.value for f in STORED_BITS)}, "
                          f"got {fmt.value!r}", hint="W8A8 formats are chosen by annotate-linears alone")
    if isinstance(bits, bool) or bits not in STORED_BITS[fmt]:
        raise ConfigError(f"{where}: {fmt.value} stores {' or '.join(map(str, STORED_BITS[fmt]))}-bit codes, "
                          f"got bits={bits!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ConfigError(f"{where}: group_size must be an int >= 0 (0: one group per output channel), "
                          f"got {group_size!r}")
    if double_quant and fmt is not WeightFormat.NF4:
        raise ConfigError(f"{where}: double_quant applies to nf4 only")


@register_pass("annotate-weight-format")
@dataclass(frozen=True)
class AnnotateWeightFormat(GraphPass):
    format: WeightFormat = WeightFormat.UINT
    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    double_quant: bool = False

    def contract(self) -> Contract:
        fmt = FORMAT_NF4 if self.format is WeightFormat.NF4 else FORMAT_UINT
        return Contract(requires={LINEARS_ANNOTATED}, ensures={ACT_FLOAT, fmt, FORMAT_CHOSEN},
                        forbids={WEIGHTS_QUANTIZED}, invalidates={ACT_INT8, OUTLIERS_DETECTED})

    def __post_init__(self):
        check_weight_format(self.format, self.bits, self.group_size, self.double_quant, "annotate-weight-format")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        for node in gm.graph.nodes:
            if is_linear(node) and get_spec(node) is not None:
                update_spec(node, act=ActGranularity.NONE, format=self.format, bits=self.bits,
                            group_size=self.group_size, double_quant=self.double_quant,
                            symmetric=self.symmetric or self.format is WeightFormat.NF4)
        return PassResult(gm, modified=False, preserved=PassResult.ALL)
