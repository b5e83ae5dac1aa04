"""The backend's own saved state (:class:`qcompiler.backends.saved_state.SavedState`) in a saved
directory: one JSON file, named with its size and sha256 in ``qcompiler.json`` under
``"backend_state"`` (so the description's hash, stored with the tensors, covers it too).

For ``backend="triton"`` that is ``kernel_configs.json``: the launch configs the autotuner chose.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from qcompiler.serialize.errors import IntegrityError, LoadError
from qcompiler.serialize.files import DESCRIPTION_FILE, STATE_ENTRY, check_state_file

__all__ = ["collect_state", "restore_state"]


def collect_state(backend: Any, qm: Any) -> tuple[dict[str, Any], bytes] | None:
    """``(description entry, file bytes)`` of what ``backend`` keeps for ``qm``, or None."""
    hook = getattr(backend, "saved_state", None)
    state = hook.collect(qm) if hook is not None else None
    if state is None:
        return None
    data = json.dumps(state, indent=1, sort_keys=True).encode()
    return {"file": hook.file, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, data


def restore_state(root: Path, doc: dict[str, Any], backend: Any, device: torch.device | None,
                  verify: bool = True) -> str | None:
    """Hands the saved state of ``root`` back to ``backend`` (before any of its kernels run).
    Returns the backend's note (also given as a warning), or None. A missing, changed or
    malformed file is a :class:`LoadError` naming it."""
    path = check_state_file(root, doc, verify)
    if path is None:
        return None
    hook = getattr(backend, "saved_state", None)
    if hook is None or hook.file != path.name:
        raise LoadError(f"{root / DESCRIPTION_FILE} names {path.name} as the state of backend "
                        f"{backend.name!r}, which keeps {hook.file if hook else 'none'}",
                        hint="the directory was written by another qcompiler: save the model again")
    try:
        state = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{path} is not valid JSON ({e})", hint="the file is damaged: save the model again") from None
    try:
        note = hook.restore(state, device)
    except (ValueError, KeyError, TypeError) as e:
        raise LoadError(f"{path} cannot be used: {e}", hint="the file is damaged or from another qcompiler: "
                                                           "save the model again") from None
    if note:
        warnings.warn(f"qcompiler.load({str(root)!r}): {note}", stacklevel=3)
    return note
