"""The int8 schemes (W8A8): LLM.int8() with fp outliers, plain vector-wise, per-tensor absmax.

==================  ==========================================================================
``int8-outlier``     vector-wise int8; input feature dims whose max |x| passes ``threshold``
                     stay in fp16 (static from calibration data, or found on every forward)
``int8-vectorwise``  int8 per row of X and per output channel of W, no decomposition
``int8-absmax``      one absmax scale for all of X and one for all of W
==================  ==========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from qcompiler.errors import ConfigError
from qcompiler.pass_manager import Pass
from qcompiler.passes.detect_outliers import DetectOutliers
from qcompiler.schemes.scheme import Scheme
from qcompiler.schemes.stages import calibration, head, tail
from qcompiler.spec import OutlierMode

__all__ = ["Int8OutlierConfig", "Int8Config", "SCHEMES"]


def _check_threshold(t: Any) -> None:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ConfigError(f"threshold must be a finite number >= 0, got {t!r}")


@dataclass(frozen=True)
class Int8OutlierConfig:
    threshold: float = 6.0
    outlier_mode: OutlierMode | str | None = None  # None: static with calibration data, else dynamic

    def __post_init__(self):
        _check_threshold(self.threshold)
        if isinstance(self.outlier_mode, str):
            try:
                object.__setattr__(self, "outlier_mode", OutlierMode(self.outlier_mode))
            except ValueError:
                raise ConfigError(f"outlier_mode must be 'static' or 'dynamic', got {self.outlier_mode!r}") from None
        if self.outlier_mode is OutlierMode.NONE:
            raise ConfigError("outlier_mode must be 'static' or 'dynamic' (use scheme 'int8-vectorwise' for none)")


@dataclass(frozen=True)
class Int8Config:
    """No options: the vector-wise and absmax schemes have nothing to tune."""


def _int8_outlier(cfg: Int8OutlierConfig, calibrated: bool) -> list[Pass]:
    mode = cfg.outlier_mode or (OutlierMode.STATIC if calibrated else OutlierMode.DYNAMIC)
    if mode is OutlierMode.STATIC and not calibrated:
        raise ConfigError("outlier_mode='static' needs calibration_data",
                          hint="give calibration_data=[...] or use outlier_mode='dynamic'")
    return [*head("row", "channel"), *calibration(calibrated),
            DetectOutliers(threshold=float(cfg.threshold), mode=mode), *tail()]


def _plain(act: str, weight: str):
    def build(cfg: Int8Config, calibrated: bool) -> list[Pass]:
        return [*head(act, weight), *calibration(calibrated), *tail()]
    return build


SCHEMES = [
    Scheme("int8-outlier", Int8OutlierConfig, _int8_outlier,
           "LLM.int8(): vector-wise int8 with outlier feature dims multiplied in fp16"),
    Scheme("int8-vectorwise", Int8Config, _plain("row", "channel"),
           "int8 per row of X and per output channel of W, no decomposition"),
    Scheme("int8-absmax", Int8Config, _plain("tensor", "tensor"),
           "one absmax scale for all of X and one for all of W (per-tensor)"),
]
