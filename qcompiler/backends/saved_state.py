"""State a backend keeps next to a saved model, besides the model's tensors and graphs.

``qcompiler.save`` asks the model's backend for it (``collect``) and writes it as one JSON file
of the saved directory, named (with its size and sha256) in ``qcompiler.json``;
``qcompiler.load`` hands it back (``restore``) before any of the backend's kernels run. The
triton backend keeps the launch configs its autotuner chose
(:mod:`qcompiler.backends.triton.kernel_config_record`), so a loaded model is bit-exact with the
saved one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["SavedState"]


@dataclass(frozen=True)
class SavedState:
    file: str                                                   # its file name in the saved directory
    # (QuantizedModel) -> a JSON-able dict, or None: nothing to keep for this model here.
    collect: Callable[[Any], dict[str, Any] | None]
    # (that dict, the device the model loads to) -> a note for the loaded model's report, or None.
    # Raises ValueError / KeyError / TypeError when the dict is malformed (load names the file).
    restore: Callable[[Any, torch.device | None], str | None]
