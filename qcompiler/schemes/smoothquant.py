"""``w8a8-smoothquant``: SmoothQuant's per-channel smoothing, then vector-wise int8 (W8A8).

    canonicalize-linear,annotate-linears{act=row,weight=channel},calibrate,
    smooth{alpha=0.5,fold=true},quantize-weights,decompose-matmul,share-activation-quant,dce

Needs calibration data (the smoothing factors come from the calibrated max |x| per channel).
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.errors import ConfigError
from qcompiler.pass_manager import Pass
from qcompiler.passes.smooth import Smooth
from qcompiler.schemes.scheme import Scheme
from qcompiler.schemes.stages import calibration, head, tail

__all__ = ["SmoothQuantConfig", "SCHEMES"]


@dataclass(frozen=True)
class SmoothQuantConfig:
    alpha: float = 0.5   # migration strength: 0 keeps x as is, 1 moves all of max|x| into W
    fold: bool = True    # fold 1/s into the preceding norm/linear where the graph allows

    def __post_init__(self):
        Smooth(alpha=self.alpha, fold=self.fold)  # the pass validates its own options
        if not isinstance(self.fold, bool):
            raise ConfigError(f"scheme 'w8a8-smoothquant': fold must be True or False, got {self.fold!r}")


def _smoothquant(cfg: SmoothQuantConfig, calibrated: bool) -> list[Pass]:
    return [*head("row", "channel"), *calibration(calibrated), Smooth(alpha=float(cfg.alpha), fold=cfg.fold), *tail()]


SCHEMES = [
    Scheme("w8a8-smoothquant", SmoothQuantConfig, _smoothquant,
           "SmoothQuant: activation outliers migrated into the weights, then vector-wise int8",
           needs_calibration=True,
           calibration_hint="its smoothing factors come from the calibrated max |x| of every input channel"),
]
