"""Backends: what the quantized ops are lowered to. A backend is a registered object naming the
passes that lower a compiled program for it, and checking up front that it can run here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from qcompiler.errors import ConfigError

__all__ = ["Backend", "register_backend", "get_backend", "list_backends"]


def _always() -> None:
    return None


@dataclass(frozen=True)
class Backend:
    name: str
    lowering: str = ""                                 # pipeline text appended to the scheme's
    check: Callable[[], None] = _always                # raises UnsupportedError when unusable here
    description: str = ""
    # Called by compile after the pipeline: (QuantizedModel, example call (args, kwargs)) ->
    # the QuantizedModel to return, e.g. one whose model runs in another runtime. None: as is.
    finalize: Callable[[Any, tuple[tuple, dict]], Any] | None = None


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    return backend


# Backends whose code lives in a subpackage that registers them on import.
_LAZY = {"triton": "qcompiler.backends.triton.backend", "onnxruntime": "qcompiler.backends.onnxruntime.backend"}


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS and name in _LAZY:
        import importlib
        try:
            importlib.import_module(_LAZY[name])
        except ImportError as e:
            raise ConfigError(f"backend {name!r} is not available: {e}",
                              hint="use backend='eager', or install what the message names") from e
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}", hint=f"available: {', '.join(list_backends())}") from None


def list_backends() -> list[str]:
    return sorted(set(_BACKENDS) | set(_LAZY))


register_backend(Backend("eager", "", description="the reference ops in plain torch (CPU and CUDA)"))
