"""Schemes: a name, a typed config, and the pipeline the config expands to.

``qcompiler.compile(model, scheme="int8-outlier", threshold=4.0)`` looks the scheme up, builds its
config from the keyword options (unknown ones are an error) and runs ``scheme.pipeline(config,
calibrated)``. Users add schemes with :func:`register_scheme`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from qcompiler.errors import ConfigError
from qcompiler.spec import OutlierMode

__all__ = ["Scheme", "register_scheme", "get_scheme", "list_schemes", "pipeline_for",
           "Int8OutlierConfig", "Int8Config"]


@dataclass(frozen=True)
class Scheme:
    name: str
    config: type                                  # a frozen dataclass of the scheme's options
    pipeline: Callable[[Any, bool], str]          # (config, has calibration data) -> pipeline text
    description: str = ""
    needs_calibration: bool = False

    def make_config(self, options: dict[str, Any]):
        fields = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ConfigError(f"scheme '{self.name}' has no option {', '.join(map(repr, unknown))}",
                              hint=f"its options: {', '.join(sorted(fields)) or '(none)'}")
        try:
            return self.config(**options)
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"scheme '{self.name}': {e}") from e


_SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    if not isinstance(scheme, Scheme):
        raise ConfigError(f"register_scheme takes a qcompiler.Scheme, got {type(scheme).__name__}")
    _SCHEMES[scheme.name] = scheme
    return scheme


def get_scheme(name: str) -> Scheme:
    try:
        return _SCHEMES[name]
    except KeyError:
        raise ConfigError(f"unknown scheme {name!r}", hint=f"available: {', '.join(list_schemes())}") from None


def list_schemes() -> list[str]:
    return sorted(_SCHEMES)


def pipeline_for(scheme: str, calibrated: bool = True, **options: Any) -> str:
    """The pass pipeline ``scheme`` expands to, as text: a starting point for a custom pipeline.

    >>> pipeline_for("int8-vectorwise", calibrated=False)
    'canonicalize-linear,annotate-linears{act=row,weight=channel},quantize-weights,...'
    """
    sch = get_scheme(scheme)
    return sch.pipeline(sch.make_config(options), calibrated)


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


_TAIL = "quantize-weights,decompose-matmul,share-activation-quant,dce"


def _int8_outlier(cfg: Int8OutlierConfig, calibrated: bool) -> str:
    mode = cfg.outlier_mode or (OutlierMode.STATIC if calibrated else OutlierMode.DYNAMIC)
    if mode is OutlierMode.STATIC and not calibrated:
        raise ConfigError("outlier_mode='static' needs calibration_data",
                          hint="give calibration_data=[...] or use outlier_mode='dynamic'")
    calib = "calibrate," if calibrated else ""
    return (f"canonicalize-linear,annotate-linears{{act=row,weight=channel}},{calib}"
            f"detect-outliers{{threshold={cfg.threshold},mode={mode.value}}},{_TAIL}")


def _plain(act: str, weight: str):
    def build(cfg: Int8Config, calibrated: bool) -> str:
        calib = "calibrate," if calibrated else ""  # only for the report's per-layer error
        return f"canonicalize-linear,annotate-linears{{act={act},weight={weight}}},{calib}{_TAIL}"
    return build


register_scheme(Scheme("int8-outlier", Int8OutlierConfig, _int8_outlier,
                       "LLM.int8(): vector-wise int8 with outlier feature dims multiplied in fp16"))
register_scheme(Scheme("int8-vectorwise", Int8Config, _plain("row", "channel"),
                       "int8 per row of X and per output channel of W, no decomposition"))
register_scheme(Scheme("int8-absmax", Int8Config, _plain("tensor", "tensor"),
                       "one absmax scale for all of X and one for all of W (per-tensor)"))
