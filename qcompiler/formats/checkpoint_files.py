"""A checkpoint directory's JSON and safetensors files, read lazily (one tensor at a time)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qcompiler.formats.errors import CheckpointFormatError

__all__ = ["CheckpointTensors", "read_json"]


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CheckpointFormatError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    return doc


class CheckpointTensors:
    """Every tensor of the ``*.safetensors`` files in a directory, by name."""

    def __init__(self, root: Path):
        from safetensors import safe_open

        files = sorted(root.glob("*.safetensors"))
        if not files:
            raise CheckpointFormatError(f"{root} holds no *.safetensors file",
                                        hint="qcompiler reads safetensors checkpoints only (no pickle)")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where: dict[str, int] = {}
        for i, h in enumerate(self._handles):
            for name in h.keys():
                self._where[name] = i
        self.root = root

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise CheckpointFormatError(f"tensor '{name}' is missing from {self.root}")
        return self._handles[self._where[name]].get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())
