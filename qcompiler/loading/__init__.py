"""Streaming loads: quantize a checkpoint block by block (``from_pretrained``), compile a model in
memory region by region (``compile(..., inplace=True)``)."""

from qcompiler.loading.checkpoint_reader import CheckpointReader
from qcompiler.loading.errors import CheckpointError, CheckpointMismatchError, DeviceMemoryError
from qcompiler.loading.from_pretrained import from_pretrained

__all__ = ["from_pretrained", "CheckpointReader", "CheckpointError", "CheckpointMismatchError", "DeviceMemoryError"]
