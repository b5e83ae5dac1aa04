"""Errors of ``qcompiler.save`` / ``qcompiler.load``: each says which file and what to do."""

from __future__ import annotations

from qcompiler.errors import QCompilerError

__all__ = ["SaveError", "LoadError", "IntegrityError", "VersionMismatchError", "BaseModelMismatchError"]


class SaveError(QCompilerError):
    """The compiled model holds something that cannot be written safely (no pickle)."""


class LoadError(QCompilerError):
    """A saved model cannot be read or rebuilt."""


class IntegrityError(LoadError):
    """A file is missing, truncated or was changed after it was written (sha256 mismatch)."""


class VersionMismatchError(LoadError):
    """Saved by a qcompiler/torch (or file format) version this one does not read."""


class BaseModelMismatchError(LoadError):
    """The float model given to ``load`` is not the one the saved model was compiled from."""
