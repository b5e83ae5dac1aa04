"""Weight-only schemes: activations stay in float, weights are stored in 8 or 4 bits.

=================  ==============================================================================
``w8-weight-only``  round-to-nearest int8, one scale per output channel (``group_size=0``)
``w4-weight-only``  round-to-nearest int4, one scale per 128 input dims, packed two per byte;
                    ``symmetric=False`` adds a uint8 zero point per group
``nf4``             QLoRA's 4-bit NormalFloat, absmax per block of 64; ``double_quant=True``
                    stores those absmax values in 8 bits (one float per 256 of them)
=================  ==============================================================================

Each expands to::

    canonicalize-linear,annotate-linears{act=none},annotate-weight-format{format=...,bits=...},
    [calibrate,]quantize-weights,decompose-matmul,share-activation-quant,dce

(``calibrate`` only when calibration data is given, for the report's per-layer error.)
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.errors import ConfigError
from qcompiler.pass_manager import Pass
from qcompiler.passes.annotate_weight_format import AnnotateWeightFormat, check_weight_format
from qcompiler.schemes.scheme import Scheme
from qcompiler.schemes.stages import calibration, head, tail
from qcompiler.spec import WeightFormat

__all__ = ["W8WeightOnlyConfig", "W4WeightOnlyConfig", "NF4Config", "SCHEMES"]


@dataclass(frozen=True)
class W8WeightOnlyConfig:
    group_size: int = 0       # 0: one scale per output channel
    symmetric: bool = True    # False: a uint8 zero point per group

    def __post_init__(self):
        check_weight_format(WeightFormat.UINT, 8, self.group_size, False, "scheme 'w8-weight-only'")


@dataclass(frozen=True)
class W4WeightOnlyConfig:
    group_size: int = 128     # input dims sharing one scale; 0: one per output channel
    symmetric: bool = True    # False: a uint8 zero point per group (asymmetric range)

    def __post_init__(self):
        check_weight_format(WeightFormat.UINT, 4, self.group_size, False, "scheme 'w4-weight-only'")


@dataclass(frozen=True)
class NF4Config:
    block_size: int = 64        # input dims sharing one absmax
    double_quant: bool = False  # store the absmax values in 8 bits (QLoRA's double quantization)

    def __post_init__(self):
        check_weight_format(WeightFormat.NF4, 4, self.block_size, self.double_quant, "scheme 'nf4'")
        if not isinstance(self.double_quant, bool):
            raise ConfigError(f"scheme 'nf4': double_quant must be True or False, got {self.double_quant!r}")


def _pipeline(fmt: WeightFormat, bits: int, group_size: int, symmetric: bool, double_quant: bool,
              calibrated: bool) -> list[Pass]:
    return [*head("none"), AnnotateWeightFormat(format=fmt, bits=bits, group_size=group_size, symmetric=symmetric,
                                                double_quant=double_quant),
            *calibration(calibrated), *tail()]


SCHEMES = [
    Scheme("w8-weight-only", W8WeightOnlyConfig,
           lambda c, cal: _pipeline(WeightFormat.UINT, 8, c.group_size, c.symmetric, False, cal),
           "int8 weights (round-to-nearest, per output channel), float activations"),
    Scheme("w4-weight-only", W4WeightOnlyConfig,
           lambda c, cal: _pipeline(WeightFormat.UINT, 4, c.group_size, c.symmetric, False, cal),
           "int4 weights (round-to-nearest, group-wise scales, packed two per byte), float activations"),
    Scheme("nf4", NF4Config,
           lambda c, cal: _pipeline(WeightFormat.NF4, 4, c.block_size, True, c.double_quant, cal),
           "bitsandbytes/QLoRA 4-bit NormalFloat, block-wise absmax (+ double quantization), float activations"),
]
