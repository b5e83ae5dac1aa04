"""``qcompiler.export_onnx``: the public entry to ONNX export (imports onnxscript lazily)."""

from __future__ import annotations

from typing import Any

__all__ = ["export_onnx"]


def export_onnx(qm, example_inputs: Any, path, dynamic_shapes: dict | None = None, target: str = "generic",
                **options: Any):
    """Write the compiled model ``qm`` as ONNX; see
    :func:`qcompiler.backends.onnxruntime.export.export_onnx` for the arguments.

    >>> qm = qcompiler.compile(model, "int8-outlier", calibration_data=batches)
    >>> qcompiler.export_onnx(qm, batches[0], "model.onnx", target="ort-cuda").lowering
    """
    from qcompiler.backends.onnxruntime.export import export_onnx as _export
    return _export(qm, example_inputs, path, dynamic_shapes, target, **options)
