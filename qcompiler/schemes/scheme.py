"""Schemes: a name, a typed config, and the pipeline the config expands to.

``qcompiler.compile(model, scheme="int8-outlier", threshold=4.0)`` looks the scheme up, builds its
config from the keyword options (unknown ones are an error) and runs ``scheme.passes(config,
calibrated)``. Users add schemes with :func:`register_scheme`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from qcompiler.errors import ConfigError
from qcompiler.pass_manager import Pass, parse_pipeline, print_pipeline
from qcompiler.registry import Registry

__all__ = ["Scheme", "SCHEMES", "register_scheme", "get_scheme", "list_schemes", "pipeline_for"]


@dataclass(frozen=True)
class Scheme:
    """``pipeline(config, calibrated)`` returns the pass objects (a user's scheme may return
    pipeline text instead). ``needs_calibration``: compile refuses to run it without data."""

    name: str
    config: type                                        # a frozen dataclass of the scheme's options
    pipeline: Callable[[Any, bool], list[Pass] | str]   # (config, has calibration data) -> passes
    description: str = ""
    needs_calibration: bool = False
    calibration_hint: str = "pass calibration_data=[...] (a few batches of real inputs) to compile"

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

    def passes(self, config: Any, calibrated: bool) -> list[Pass]:
        """The pipeline for ``config``; raises when the scheme needs calibration data and has none."""
        if self.needs_calibration and not calibrated:
            raise ConfigError(f"scheme '{self.name}' needs calibration data", hint=self.calibration_hint)
        out = self.pipeline(config, calibrated)
        return parse_pipeline(out) if isinstance(out, str) else list(out)


SCHEMES: Registry[Scheme] = Registry("scheme")


def register_scheme(scheme: Scheme) -> Scheme:
    if not isinstance(scheme, Scheme):
        raise ConfigError(f"register_scheme takes a qcompiler.Scheme, got {type(scheme).__name__}")
    return SCHEMES.register(scheme.name, scheme)


def get_scheme(name: str) -> Scheme:
    return SCHEMES.get(name)


def list_schemes() -> list[str]:
    return SCHEMES.names()


def pipeline_for(scheme: str, calibrated: bool = True, **options: Any) -> str:
    """The pass pipeline ``scheme`` expands to, as text: a starting point for a custom pipeline.

    >>> pipeline_for("int8-vectorwise", calibrated=False)
    'canonicalize-linear,annotate-linears{act=row,weight=channel},quantize-weights,...'
    """
    sch = get_scheme(scheme)
    return print_pipeline(sch.passes(sch.make_config(options), calibrated))
