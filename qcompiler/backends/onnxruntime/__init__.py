"""ONNX export and the ONNX Runtime backend.

* :func:`export_onnx` writes a compiled model as ONNX (``export.py``), with one onnxscript
  translation per qcompiler op (``translations.py``) and a per-target lowering
  (``targets.py``: ``generic``, ``ort-cpu``, ``ort-cuda``; ``matmul_nbits.py`` for CUDA;
  ``label_lowering.py`` says in the report what each layer became). ``writer.py`` turns a module
  and one call into a checked file; :func:`export_float_onnx` does that for uncompiled models
  (the float baselines).
* :class:`OrtModule` runs an export in ONNX Runtime behind the model's call signature
  (``session.py``, ``signature.py``).
* ``backend.py`` registers ``backend="onnxruntime"`` for ``qcompiler.compile``.
"""

from qcompiler.backends.onnxruntime.export import OnnxExport, check_onnx_file, export_onnx, lowered_view
from qcompiler.backends.onnxruntime.session import OrtModule, open_session
from qcompiler.backends.onnxruntime.targets import ExportTarget, get_target, list_targets, register_target
from qcompiler.backends.onnxruntime.writer import export_float_onnx

__all__ = ["export_onnx", "export_float_onnx", "OnnxExport", "check_onnx_file", "lowered_view", "OrtModule", "open_session", "ExportTarget",
           "get_target", "list_targets", "register_target"]
