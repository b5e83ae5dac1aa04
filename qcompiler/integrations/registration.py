"""Registers :mod:`qcompiler.integrations.hf_quantizer` with transformers at the moment transformers
loads its quantizer package, so ``import qcompiler`` stays fast and a directory written by
``qcompiler.save`` (config.json: ``quant_method="qcompiler"``) is never read by transformers without
qcompiler's quantizer there to answer for it (unregistered, transformers would warn, skip the
quantization and hand back a model of random weights).

Importing ``transformers.quantizers`` costs ~3 s; it happens anyway inside ``from_pretrained``.
If it is already imported when qcompiler is, the quantizer registers at once; otherwise a one-shot
import finder waits for it and registers right after the package has run. Nothing of transformers
is patched: the registration goes through ``register_quantization_config`` / ``register_quantizer``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings

__all__ = ["register_with_transformers", "TRANSFORMERS_QUANTIZERS"]

TRANSFORMERS_QUANTIZERS = "transformers.quantizers"


def _register() -> None:
    try:
        import qcompiler.integrations.hf_quantizer  # noqa: F401 - registers on import
    except Exception as e:  # noqa: BLE001 - never break the user's transformers import
        warnings.warn(f"qcompiler could not register its transformers quantizer: {type(e).__name__}: {e}",
                      stacklevel=2)


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the real loader of ``transformers.quantizers``, then registers qcompiler's quantizer."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register()

    def __getattr__(self, name):  # resource readers, get_source, ...: the real loader's
        return getattr(self.inner, name)


class _WaitForQuantizers(importlib.abc.MetaPathFinder):
    """One shot: on the import of ``transformers.quantizers``, wraps its loader and leaves."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TRANSFORMERS_QUANTIZERS:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def register_with_transformers() -> None:
    """Registers now if transformers' quantizers are loaded, else as soon as they are."""
    if TRANSFORMERS_QUANTIZERS in sys.modules:
        _register()
    elif not any(isinstance(f, _WaitForQuantizers) for f in sys.meta_path):
        sys.meta_path.insert(0, _WaitForQuantizers())
