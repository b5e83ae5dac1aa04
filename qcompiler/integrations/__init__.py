"""Integrations with other libraries: transformers' quantizer API (:mod:`.hf_quantizer`).

``qcompiler.QCompilerConfig`` imports :mod:`.hf_quantizer`, which registers it with transformers.
"""

__all__: list[str] = []
