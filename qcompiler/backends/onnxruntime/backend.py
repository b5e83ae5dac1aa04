"""``backend="onnxruntime"``: compile, export to ONNX, and run the model in ONNX Runtime.

``qcompiler.compile(model, scheme, data, backend="onnxruntime")`` runs the scheme's pipeline as
usual (the backend adds no lowering passes of its own), then the backend's ``finalize`` hook
exports the program (target ``ort-cuda`` when ONNX Runtime has the CUDA execution provider, else
``ort-cpu``) into a temporary folder that lives as long as the returned model, opens an
``InferenceSession`` and puts an :class:`OrtModule` in place of the eager model. The returned
``QuantizedModel`` is called like the original; ``qm.program`` still holds the eager graphs and
``qm.report()`` says which ONNX operators each layer became.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

from qcompiler.backends import Backend, register_backend
from qcompiler.errors import UnsupportedError
from qcompiler.install_hint import install_hint

__all__ = ["ONNXRUNTIME", "finalize", "default_target"]


def _check() -> None:
    missing = []
    for mod in ("onnxruntime", "onnxscript", "onnx"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise UnsupportedError(f"backend 'onnxruntime' needs {', '.join(missing)}",
                               hint=install_hint("onnx", *missing) + "; onnxruntime-gpu for the CUDA EP")


def default_target() -> str:
    from qcompiler.backends.onnxruntime.session import available_providers
    return "ort-cuda" if "CUDAExecutionProvider" in available_providers() else "ort-cpu"


def finalize(qm, example: tuple[tuple, dict]):
    """Export ``qm`` (one call: ``example``), open it in ONNX Runtime, and make ``qm`` run it."""
    from qcompiler.backends.onnxruntime.export import export_onnx
    from qcompiler.backends.onnxruntime.session import OrtModule
    from qcompiler.backends.onnxruntime.targets import get_target

    target = get_target(default_target())
    folder = Path(tempfile.mkdtemp(prefix="qcompiler-ort-"))
    try:
        args, kwargs = example
        exported = export_onnx(qm, (*args,) if not kwargs else {**dict(zip(_names(qm, args), args)), **kwargs},
                               folder / "model.onnx", target=target.name)
        runner = OrtModule(exported, target.providers, eager=qm.program.root)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(runner, shutil.rmtree, str(folder), True)
    qm._modules["model"] = runner
    qm.report().notes.append(f"runs in ONNX Runtime ({', '.join(runner.providers)}) from {exported.path}")
    return qm


def _names(qm, args: tuple) -> list[str]:
    """Positional args as keyword names, so a mixed (args, kwargs) call can be one example dict."""
    from qcompiler.backends.onnxruntime.signature import call_signature
    return list(call_signature(qm.program.root).parameters)[:len(args)]


ONNXRUNTIME = register_backend(Backend(
    "onnxruntime", "", _check,
    "exported to ONNX and run in ONNX Runtime (CUDA EP with I/O binding, else CPU EP)", finalize))
