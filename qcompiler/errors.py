"""The errors qcompiler raises. Each one says what is wrong, where, and what to do."""

from __future__ import annotations

__all__ = [
    "QCompilerError",
    "CaptureError",
    "CalibrationError",
    "ConfigError",
    "UnsupportedError",
    "PassError",
    "VerificationError",
]


class QCompilerError(Exception):
    """Base class. ``hint`` is the one line telling the user what to do next."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class CaptureError(QCompilerError):
    """The model (or a submodule) could not be captured into a graph."""


class CalibrationError(QCompilerError):
    """Calibration data is empty, non-finite, or does not fit the model."""


class ConfigError(QCompilerError, ValueError):
    """An unknown scheme, pass, backend or option, or an option with a bad value."""


class UnsupportedError(QCompilerError):
    """A dtype, device or op that the chosen scheme or backend cannot handle."""


class VerificationError(QCompilerError):
    """The graph broke one of qcompiler's invariants."""


class PassError(QCompilerError):
    """A pass failed. Carries the pass name, the passes run before it and the node involved."""

    def __init__(self, message: str, *, pass_name: str, history: list[str], node: str | None,
                 region: str | None = None, hint: str | None = None):
        self.pass_name = pass_name
        self.history = list(history)
        self.node = node
        self.region = region
        where = f"pass '{pass_name}'"
        if region:
            where += f" on region '{region}'"
        if node:
            where += f" at node '{node}'"
        ran = ", ".join(history) if history else "(none)"
        super().__init__(f"{where} failed: {message}\n  passes run before: {ran}", hint=hint)
