"""The files of a saved model: names, format version, hashes, and reading them back checked.

Tensors live in ``model.safetensors`` or, past ``max_shard_size``, in shards
``model-0000k-of-0000n.safetensors`` (plus a Hugging Face style ``model.safetensors.index.json``).
Every shard carries the sha256 of the description (in its metadata); ``qcompiler.json`` carries
the sha256 and size of every shard. A file changed after saving, or cut short, is an
:class:`~qcompiler.serialize.errors.IntegrityError` before anything is rebuilt. Format version 1
(one ``model.safetensors``, ``weights: {file, bytes, sha256}``) is still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from qcompiler.serialize.errors import IntegrityError, VersionMismatchError

__all__ = ["FORMAT", "FORMAT_VERSION", "READABLE_VERSIONS", "INDEX_FILE", "weight_files", "WEIGHTS_FILE", "DESCRIPTION_FILE", "DESCRIPTION_SHA", "versions",
           "canonical_sha", "file_sha256", "read_description", "check_versions", "read_weights", "verify_files",
           "read_tensors", "check_weight_files", "check_file", "STATE_ENTRY", "check_state_file"]

FORMAT = "qcompiler.saved_model"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
DESCRIPTION_FILE = "qcompiler.json"
DESCRIPTION_SHA = "qcompiler.description_sha256"  # safetensors metadata: ties the two files together
STATE_ENTRY = "backend_state"  # description entry {file, bytes, sha256} of the backend's saved state, if any


def versions() -> dict[str, str]:
    import safetensors

    import qcompiler
    return {"qcompiler": qcompiler.__version__, "torch": torch.__version__.split("+")[0],
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def canonical_sha(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "weights"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_description(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``qcompiler.json`` of a saved model (format checked, tensors not read)."""
    p = Path(path) / DESCRIPTION_FILE
    if not p.is_file():
        raise IntegrityError(f"{p} does not exist", hint=f"give the directory qcompiler.save wrote "
                                                         f"({DESCRIPTION_FILE} + {WEIGHTS_FILE})")
    try:
        doc = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{p} is not valid JSON ({e})", hint="the file is damaged: save the model again") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IntegrityError(f"{p} is not a qcompiler saved model")
    if doc.get("format_version") not in READABLE_VERSIONS:
        raise VersionMismatchError(f"{p} has format version {doc.get('format_version')!r}; this qcompiler "
                                   f"reads version {FORMAT_VERSION}",
                                   hint=f"load it with the qcompiler that saved it "
                                        f"({doc.get('versions', {}).get('qcompiler', '?')})")
    return doc


def _major_minor(v: str) -> tuple[str, ...]:
    return tuple(v.split("+")[0].split(".")[:2])


def check_versions(doc: dict[str, Any]) -> None:
    now, then = versions(), doc.get("versions", {})
    for name in ("qcompiler", "torch"):
        if _major_minor(str(then.get(name, "?"))) != _major_minor(now[name]):
            raise VersionMismatchError(
                f"saved with {name} {then.get(name, '?')}, this is {name} {now[name]}",
                hint=f"use {name} {then.get(name, '?')}, or pass check_versions=False to try anyway")


def weight_files(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{file, bytes, sha256}, ...]`` of a description, either format version."""
    w = doc.get("weights") or {}
    if "files" in w:
        return list(w["files"])
    return [{"file": str(w.get("file", WEIGHTS_FILE)), "bytes": w.get("bytes"), "sha256": w.get("sha256")}]


def check_file(p: Path, w: dict[str, Any], verify: bool) -> None:
    """``p`` exists, has the size ``w["bytes"]`` and (with ``verify``) the sha256 ``w["sha256"]``."""
    if not p.is_file():
        raise IntegrityError(f"{p} does not exist", hint="copy the whole saved directory")
    size = p.stat().st_size
    if size != w.get("bytes"):
        raise IntegrityError(f"{p} is {size} bytes, {w.get('bytes')} were written"
                             + (" (truncated)" if isinstance(w.get("bytes"), int) and size < w["bytes"] else ""),
                             hint="the file is damaged or incomplete: copy or save it again")
    if verify and file_sha256(p) != w.get("sha256"):
        raise IntegrityError(f"{p} does not match the sha256 recorded in {DESCRIPTION_FILE}",
                             hint="the file was changed after it was written: save the model again")


def check_weight_files(root: Path, doc: dict[str, Any], verify: bool = True) -> None:
    """Every shard the description lists is there, of the size written (and, with ``verify``, its sha256)."""
    for w in weight_files(doc):
        check_file(root / str(w["file"]), w, verify)


def check_state_file(root: Path, doc: dict[str, Any], verify: bool = True) -> Path | None:
    """The backend-state file the description names (checked like the shards), or None."""
    w = doc.get(STATE_ENTRY)
    if w is None:
        return None
    if not isinstance(w, dict) or not isinstance(w.get("file"), str) or Path(w["file"]).name != w["file"]:
        raise IntegrityError(f"{DESCRIPTION_FILE} has a malformed {STATE_ENTRY!r} entry: {w!r:.80}")
    check_file(root / w["file"], w, verify)
    return root / w["file"]


def read_weights(root: Path, doc: dict[str, Any], *, device: str | torch.device = "cpu",
                 verify: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model, read straight onto ``device`` (safetensors memory-maps each
    shard and copies one tensor at a time). ``verify=False`` skips the sha256 (sizes still checked)."""
    from safetensors import safe_open

    files = weight_files(doc)
    check_weight_files(root, doc, verify)
    want = canonical_sha(doc)
    tensors: dict[str, torch.Tensor] = {}
    for w in files:
        with safe_open(str(root / str(w["file"])), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get(DESCRIPTION_SHA) != want:
                raise IntegrityError(f"{DESCRIPTION_FILE} was changed after the model was saved",
                                     hint="its contents no longer match the hash stored with the tensors")
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    manifest = doc.get("tensors", {})
    if set(manifest) != set(tensors):
        raise IntegrityError("the tensors in the file differ from those listed in the description")
    for k, t in tensors.items():
        want = manifest[k]
        if str(t.dtype).removeprefix("torch.") != want["dtype"] or list(t.shape) != want["shape"]:
            raise IntegrityError(f"tensor {k!r} is {t.dtype}{list(t.shape)}, listed as {want['dtype']}{want['shape']}")
    for alias, key in doc.get("aliases", {}).items():
        if key not in tensors:
            raise IntegrityError(f"alias {alias!r} points to missing tensor {key!r}")
        tensors[alias] = tensors[key]
    return tensors


def verify_files(path: str | os.PathLike) -> dict[str, Any]:
    """Checks a saved model's files (sha256 of the tensors, the description they were saved
    with, every tensor's dtype and shape) without the base model; returns the description."""
    doc = read_description(path)
    read_weights(Path(path), doc)
    check_state_file(Path(path), doc)
    return doc


def read_tensors(path: str | os.PathLike, keys: list[str]) -> dict[str, torch.Tensor]:
    """Some tensors of a saved model by key (aliases followed), without checking the whole file:
    for quick looks (``qcompiler inspect``); :func:`load` and :func:`verify_files` check it all."""
    from safetensors import safe_open

    doc = read_description(path)
    aliases = doc.get("aliases", {})
    file = Path(path) / str((doc.get("weights") or {}).get("file", WEIGHTS_FILE))
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(aliases.get(k, k)) for k in keys}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise IntegrityError(f"cannot read tensors from {file}: {e}", hint="check the file: qcompiler inspect "
                                                                           "--verify") from e
