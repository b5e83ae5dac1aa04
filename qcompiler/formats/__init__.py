"""Checkpoint formats of the LLM world: read GPTQ / AWQ / compressed-tensors, write compressed-tensors.

One file per format (a config parser + a per-linear reader): ``gptq.py``, ``awq.py``,
``compressed_tensors.py``; ``detect.py`` picks one from the directory's config files;
``load_checkpoint.py`` builds the model; ``compressed_tensors_writer.py`` writes qcompiler models.
"""

import qcompiler.formats.checkpoint_weights  # noqa: F401 - registers the checkpoint-weights pass
from qcompiler.formats.detect import FORMAT_READERS, detect_format, read_format_config, register_format_reader
from qcompiler.formats.errors import CheckpointFormatError, ExportFormatError, UnsupportedFormatError
from qcompiler.formats.load_checkpoint import load_checkpoint

__all__ = ["load_checkpoint", "detect_format", "read_format_config", "register_format_reader", "FORMAT_READERS",
           "CheckpointFormatError", "UnsupportedFormatError", "ExportFormatError"]
