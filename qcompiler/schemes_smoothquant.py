"""``w8a8-smoothquant``: SmoothQuant's per-channel smoothing, then vector-wise int8 (W8A8).

    canonicalize-linear,annotate-linears{act=row,weight=channel},calibrate,
    smooth{alpha=0.5,fold=true},quantize-weights,decompose-matmul,share-activation-quant,dce

Needs calibration data (the smoothing factors come from the calibrated max |x| per channel).
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.errors import ConfigError
from qcompiler.passes.smooth import Smooth
from qcompiler.schemes import Scheme, register_scheme

__all__ = ["SmoothQuantConfig"]


@dataclass(frozen=True)
class SmoothQuantConfig:
    alpha: float = 0.5   # migration strength: 0 keeps x as is, 1 moves all of max|x| into W
    fold: bool = True    # fold 1/s into the preceding norm/linear where the graph allows

    def __post_init__(self):
        Smooth(alpha=self.alpha, fold=self.fold)  # the pass validates its own options
        if not isinstance(self.fold, bool):
            raise ConfigError(f"scheme 'w8a8-smoothquant': fold must be True or False, got {self.fold!r}")


def _smoothquant(cfg: SmoothQuantConfig, calibrated: bool) -> str:
    if not calibrated:
        raise ConfigError("scheme 'w8a8-smoothquant' needs calibration_data",
                          hint="its smoothing factors come from the calibrated max |x| of every input channel")
    return (f"canonicalize-linear,annotate-linears{{act=row,weight=channel}},calibrate,"
            f"smooth{{alpha={cfg.alpha},fold={str(cfg.fold).lower()}}},"
            f"quantize-weights,decompose-matmul,share-activation-quant,dce")


register_scheme(Scheme("w8a8-smoothquant", SmoothQuantConfig, _smoothquant,
                       "SmoothQuant: activation outliers migrated into the weights, then vector-wise int8",
                       needs_calibration=True))
