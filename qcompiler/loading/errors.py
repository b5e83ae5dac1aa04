"""Errors of streaming loads: each names the file, tensor or block and says what to do."""

from __future__ import annotations

from qcompiler.errors import QCompilerError, UnsupportedError

__all__ = ["CheckpointError", "CheckpointMismatchError", "DeviceMemoryError"]


class CheckpointError(QCompilerError):
    """A checkpoint directory is missing files, has a truncated shard, or cannot be read safely."""


class CheckpointMismatchError(CheckpointError):
    """config.json describes a model whose tensors are not the ones in the shards."""


class DeviceMemoryError(UnsupportedError):
    """The device cannot hold even one block of the model while it is quantized."""
