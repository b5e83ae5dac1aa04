"""``sweep_gemv.py --production``'s "before" rows: the GEMV kernels of another checkout, loaded from
its files under their own module names, so both versions are timed in one run on one card.

The checkout is ``$SWEEP_GEMV_BEFORE``, by default the tree three levels above this file (main,
when the sweep runs from a worktree in ``.wt/<name>``). Its modules import the shared helpers
(``_config``, ``_weight_operand``, ...) of the tree on ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["before_modules", "BEFORE_ROOT"]

BEFORE_ROOT = os.environ.get("SWEEP_GEMV_BEFORE", os.path.join(os.path.dirname(__file__), "..", "..", ".."))
_LOADED: list = []


def before_modules() -> tuple:
    """(one-row GEMV module, split-K GEMV module) of BEFORE_ROOT, None where it has no such file."""
    if not _LOADED:
        for name in ("weight_only_gemv_row", "weight_only_gemv"):
            path = os.path.join(BEFORE_ROOT, "qcompiler", "backends", "triton", f"{name}.py")
            if not os.path.exists(path):
                _LOADED.append(None)
                continue
            spec = importlib.util.spec_from_file_location(f"_before_{name}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            _LOADED.append(mod)
    return tuple(_LOADED)
