"""Write a saved model's directory so that no reader ever sees it half-written.

Every file is written under a temporary directory inside the target, then moved into place one
by one with ``os.replace`` (atomic per file), ``qcompiler.json`` last: until it lands, the old
description (if any) still names the old shards' sha256, so a crash in between is an
IntegrityError on load, never a silently mixed model. On any error the temporary directory is
removed and nothing of the new save remains. Shards of an earlier save that the new one does
not use are removed after the description lands. Other files in the directory are left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from qcompiler.serialize.errors import SaveError
from qcompiler.serialize.files import DESCRIPTION_FILE, DESCRIPTION_SHA, FORMAT, INDEX_FILE, WEIGHTS_FILE, file_sha256

__all__ = ["plan_shards", "write_directory", "parse_size", "SHARD_PATTERN"]

SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """``"4GB"``, ``"500MiB"`` or a byte count."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", str(size).upper())
    if not m:
        raise SaveError(f"max_shard_size={size!r} is not a size", hint="use e.g. '4GB', '500MiB' or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> dict[str, str]:
    """Tensor key -> file name, filling shards in order up to ``max_bytes`` each."""
    groups: list[list[str]] = [[]]
    size = 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += n
    if len(groups) == 1:
        return {k: WEIGHTS_FILE for k in groups[0]}
    total = len(groups)
    return {k: f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i, g in enumerate(groups) for k in g}


def write_directory(out: Path, tensors: dict[str, torch.Tensor], where: dict[str, str], doc: dict[str, Any],
                    description_sha: str, extra: Callable[[Path], None] | None = None) -> None:
    """Writes the shards, ``extra(tmpdir)`` (config.json, tokenizer files), then ``doc`` with the
    shards' sizes and sha256 filled in, and moves them into ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".qcompiler-save-", dir=out))
    try:
        files = list(dict.fromkeys(where.values()))
        records = []
        for name in files:
            part = {k: tensors[k] for k, f in where.items() if f == name}
            save_file(part, str(tmp / name), metadata={"format": "pt", "qcompiler.format": FORMAT,
                                                       DESCRIPTION_SHA: description_sha})
            records.append({"file": name, "bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)})
        if len(files) > 1:
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                     "weight_map": dict(where)}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=1))
        if extra is not None:
            extra(tmp)
        doc["weights"] = {"files": records}
        (tmp / DESCRIPTION_FILE).write_text(json.dumps(doc, indent=1))
        umask = os.umask(0)
        os.umask(umask)
        written = [p for p in tmp.iterdir() if p.name != DESCRIPTION_FILE] + [tmp / DESCRIPTION_FILE]
        for p in written:
            if p.is_file():
                os.chmod(p, 0o666 & ~umask)  # safetensors/mkdtemp create files private; make them like any other
            target = out / p.name
            if p.is_dir():
                if target.exists():
                    shutil.rmtree(target)
            os.replace(p, target)
        stale = [p for p in out.iterdir() if p.is_file() and SHARD_PATTERN.fullmatch(p.name) and p.name not in files]
        if WEIGHTS_FILE not in files and (out / WEIGHTS_FILE).is_file():
            stale.append(out / WEIGHTS_FILE)
        if len(files) == 1 and (out / INDEX_FILE).is_file():
            stale.append(out / INDEX_FILE)
        for p in stale:
            p.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
