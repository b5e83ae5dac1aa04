"""Integrations with other libraries: transformers' quantizer API (:mod:`.hf_quantizer`).

``QCompilerConfig`` is registered with transformers when this package is imported (``import
qcompiler`` does); it is None when transformers is not installed.
"""

import importlib.util

if importlib.util.find_spec("transformers") is not None:
    from qcompiler.integrations.hf_quantizer import QCompilerConfig
else:  # transformers is an optional dependency
    QCompilerConfig = None

__all__ = ["QCompilerConfig"]
