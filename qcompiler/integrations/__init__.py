"""Integrations with other libraries (Hugging Face transformers' quantizer API)."""

__all__: list[str] = []
