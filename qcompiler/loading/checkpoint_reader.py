"""A Hugging Face checkpoint directory, read one tensor at a time: never the whole state dict.

``save_pretrained`` writes ``model.safetensors`` or ``model-0000k-of-0000n.safetensors`` plus
``model.safetensors.index.json`` (tensor name -> shard). :class:`CheckpointReader` checks, before
anything is read, that every shard the index names is there and that no shard is cut short (each
tensor's byte range lies inside its file), then hands out tensors by name through
``safetensors.safe_open`` (memory-mapped: reading one tensor touches only its bytes).

Pickle checkpoints (``pytorch_model.bin``) are read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers, so no code from the file ever runs; they are
not memory-mapped per tensor, so the whole file is held while loading.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable

import torch

from qcompiler.loading.errors import CheckpointError

__all__ = ["CheckpointReader", "SAFE_INDEX", "SAFE_SINGLE", "BIN_INDEX", "BIN_SINGLE"]

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

_SAFE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, with every tensor's range checked against its size."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is {size} bytes: too short to be a safetensors file (truncated?)",
                                      hint="copy or download the shard again")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise CheckpointError(f"{path} is truncated: its header alone needs {8 + n} bytes, the file has {size}",
                                      hint="copy or download the shard again")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a safetensors file (bad header: {e})",
                              hint="copy or download the shard again") from None
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + n + end > size:
        last = max(header, key=lambda k: int(header[k]["data_offsets"][1]))
        raise CheckpointError(f"{path} is truncated: it is {size} bytes, its tensors (the last: {last!r}) need "
                              f"{8 + n + end}", hint="copy or download the shard again")
    return header


class CheckpointReader:
    """Tensors of a checkpoint directory by name: ``keys()``, ``shape(k)``, ``dtype(k)``, ``get(k)``.

    >>> r = CheckpointReader("llama-dir")
    >>> r.get("model.layers.0.mlp.up_proj.weight", dtype=torch.float16, device="cuda")
    """

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        if not self.root.is_dir():
            raise CheckpointError(f"{self.root} is not a directory", hint="give the directory save_pretrained wrote")
        self._where: dict[str, Path] = {}      # tensor name -> file holding it
        self._info: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._open: dict[Path, object] = {}
        self._bin: dict[Path, dict[str, torch.Tensor]] = {}
        self.format = self._index()

    # ------------------------------------------------------------------ discovery
    def _index(self) -> str:
        r = self.root
        if (r / SAFE_INDEX).is_file():
            self._from_index(r / SAFE_INDEX)
            return "safetensors"
        if (r / SAFE_SINGLE).is_file():
            self._add_safetensors(r / SAFE_SINGLE)
            return "safetensors"
        if (r / BIN_INDEX).is_file() or (r / BIN_SINGLE).is_file():
            files = self._index_files(r / BIN_INDEX) if (r / BIN_INDEX).is_file() else [r / BIN_SINGLE]
            for f in files:
                for k, t in self._load_bin(f).items():
                    self._where[k] = f
                    self._info[k] = (tuple(t.shape), t.dtype)
            return "bin"
        found = sorted(p.name for p in r.iterdir())[:8]
        raise CheckpointError(f"{r} holds no weights: none of {SAFE_INDEX}, {SAFE_SINGLE}, {BIN_INDEX}, {BIN_SINGLE}"
                              f" (it has: {', '.join(found) or 'nothing'})",
                              hint="give the directory model.save_pretrained(...) wrote")

    def _index_files(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{index} is not a valid index (no weight_map: {e})") from None
        files = []
        for name in dict.fromkeys(weight_map.values()):
            f = self.root / name
            if not f.is_file():
                owner = next(k for k, v in weight_map.items() if v == name)
                raise CheckpointError(f"shard {f} is missing (it holds {owner!r} and others, says {index.name})",
                                      hint="copy the whole checkpoint directory")
            files.append(f)
        return files

    def _from_index(self, index: Path) -> None:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        for f in self._index_files(index):
            self._add_safetensors(f)
        for k, name in weight_map.items():
            if self._where.get(k) != self.root / name:
                raise CheckpointError(f"{index.name} puts {k!r} in {name}, which does not hold it",
                                      hint="the index and the shards come from different saves")

    def _add_safetensors(self, f: Path) -> None:
        for k, v in _safetensors_header(f).items():
            if v.get("dtype") not in _SAFE_DTYPES:
                raise CheckpointError(f"tensor {k!r} in {f} has dtype {v.get('dtype')}, which qcompiler does not read")
            self._where[k] = f
            self._info[k] = (tuple(v["shape"]), _SAFE_DTYPES[v["dtype"]])

    def _load_bin(self, f: Path) -> dict[str, torch.Tensor]:
        if f not in self._bin:
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError / RuntimeError / EOFError
                raise CheckpointError(f"{f} cannot be read safely: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                                      hint="qcompiler only reads pickle checkpoints that hold plain tensors "
                                           "(weights_only=True); convert it to safetensors") from None
            if not isinstance(sd, dict) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
                raise CheckpointError(f"{f} does not hold a flat dict of tensors")
            self._bin[f] = sd
        return self._bin[f]

    # ------------------------------------------------------------------ access
    def keys(self) -> list[str]:
        return list(self._info)

    def __contains__(self, key: str) -> bool:
        return key in self._info

    def shape(self, key: str) -> tuple[int, ...]:
        return self._info[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._info[key][1]

    def file(self, key: str) -> Path:
        return self._where[key]

    def nbytes(self, keys: Iterable[str], dtype: torch.dtype | None = None) -> int:
        """Bytes the tensors ``keys`` take (as ``dtype`` when floating, else as stored)."""
        total = 0
        for k in keys:
            shape, dt = self._info[k]
            size = (dtype if dtype is not None and dt.is_floating_point else dt).itemsize
            total += size * int(torch.Size(shape).numel())
        return total

    def get(self, key: str, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor, cast to ``dtype`` if it is floating point, on ``device``."""
        if key not in self._where:
            raise CheckpointError(f"tensor {key!r} is not in the checkpoint {self.root}",
                                  hint="the config and the weights come from different models")
        f = self._where[key]
        if self.format == "bin":
            t = self._load_bin(f)[key]
        else:
            from safetensors import safe_open
            handle = self._open.get(f)
            if handle is None:  # one shard open at a time: its mapped pages leave the RSS when the next opens
                self._open.clear()
                handle = self._open[f] = safe_open(str(f), framework="pt")
            try:
                t = handle.get_tensor(key)
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise CheckpointError(f"cannot read {key!r} from {f}: {e}", hint="copy the shard again") from None
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            return t.to(device=device, dtype=dtype)
        if torch.device(device).type == "cpu":
            # safetensors hands out views of the shard's memory map: a view kept (the embeddings) keeps
            # the whole map, and every page of it read since, resident. A copy owns its memory.
            return t.clone()
        return t.to(device)

    def close(self) -> None:
        self._open.clear()
        self._bin.clear()
