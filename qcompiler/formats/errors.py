"""Errors of the checkpoint readers and writers: each names the file or tensor and what was expected."""

from __future__ import annotations

from qcompiler.serialize.errors import LoadError, SaveError

__all__ = ["CheckpointFormatError", "UnsupportedFormatError", "ExportFormatError"]


class CheckpointFormatError(LoadError):
    """A checkpoint's tensors do not match its ``quantization_config`` (bits, group size, a
    missing tensor, a shape)."""


class UnsupportedFormatError(LoadError):
    """A format, or a variant of one (gptq_v2 zeros, AWQ GEMV, Marlin), that qcompiler does not read."""


class ExportFormatError(SaveError):
    """The compiled model holds something the target format cannot express exactly."""
