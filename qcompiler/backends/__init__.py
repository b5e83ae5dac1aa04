"""Backends: what the quantized ops are lowered to. A backend is a registered object naming the
passes that lower a compiled program for it, and checking up front that it can run here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from qcompiler.registry import Registry

if TYPE_CHECKING:
    from qcompiler.backends.saved_state import SavedState

__all__ = ["Backend", "BACKENDS", "register_backend", "get_backend", "list_backends"]


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
    # Whether ``finalize`` also runs on a model ``qcompiler.load(dir)`` rebuilt without its float
    # model (the saved example call stands in for the one compile had).
    finalize_standalone: bool = False
    # What ``qcompiler.save`` keeps besides tensors and graphs, and ``load`` gives back before
    # ``finalize`` (see :mod:`qcompiler.backends.saved_state`). None: nothing.
    saved_state: SavedState | None = None


# Backends whose code lives in a subpackage that registers them on import.
BACKENDS: Registry[Backend] = Registry("backend", lazy={"triton": "qcompiler.backends.triton.backend",
                                                        "onnxruntime": "qcompiler.backends.onnxruntime.backend"})


def register_backend(backend: Backend) -> Backend:
    return BACKENDS.register(backend.name, backend)


def get_backend(name: str) -> Backend:
    return BACKENDS.get(name)


def list_backends() -> list[str]:
    return BACKENDS.names()


register_backend(Backend("eager", "", description="the reference ops in plain torch (CPU and CUDA)"))
