"""Which checkpoint format a directory holds, from its config files.

``config.json``'s ``quantization_config.quant_method`` names it (``gptq``, ``awq``,
``compressed-tensors``); without one, AutoGPTQ's ``quantize_config.json`` means GPTQ and AutoAWQ's
``quant_config.json`` means AWQ. A directory written by ``qcompiler.save`` has ``qcompiler.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from qcompiler.formats.awq import AWQConfig
from qcompiler.formats.checkpoint_files import read_json
from qcompiler.formats.compressed_tensors import CompressedTensorsConfig
from qcompiler.formats.errors import CheckpointFormatError, UnsupportedFormatError
from qcompiler.formats.gptq import GPTQConfig

__all__ = ["FORMAT_READERS", "register_format_reader", "detect_format", "read_format_config"]

# quant_method -> the config class of its reader (from_config, claims, read_linear, stored_tensors)
FORMAT_READERS: dict[str, Callable[[dict, str], Any]] = {
    "gptq": GPTQConfig.from_config,
    "awq": AWQConfig.from_config,
    "compressed-tensors": CompressedTensorsConfig.from_config,
}


def register_format_reader(quant_method: str, from_config: Callable[[dict, str], Any]) -> None:
    """Adds a reader: ``from_config(quantization_config, where)`` returns an object with
    ``claims(tensors, name)``, ``read_linear(tensors, name, linear)`` and ``stored_tensors(name)``."""
    FORMAT_READERS[quant_method] = from_config


def detect_format(root: str | Path) -> tuple[str, dict, str] | None:
    """``(quant_method, quantization_config, file it came from)``, or None for an unquantized or
    qcompiler-native directory."""
    root = Path(root)
    cfg = read_json(root / "config.json") or {}
    q = cfg.get("quantization_config")
    if isinstance(q, dict) and q.get("quant_method"):
        return str(q["quant_method"]).lower(), q, str(root / "config.json")
    for name, method in (("quantize_config.json", "gptq"), ("quant_config.json", "awq")):
        doc = read_json(root / name)
        if doc is not None:
            return method, doc, str(root / name)
    return None


def read_format_config(root: str | Path):
    """The parsed config of the directory's format (a GPTQConfig, AWQConfig, ...)."""
    found = detect_format(root)
    if found is None:
        raise CheckpointFormatError(f"{root}: config.json has no quantization_config and there is no "
                                    "quantize_config.json / quant_config.json",
                                    hint="not a quantized checkpoint; load the float model with transformers")
    method, q, where = found
    if method not in FORMAT_READERS:
        raise UnsupportedFormatError(f"{where}: quant_method {method!r} is not read",
                                     hint=f"qcompiler reads {', '.join(sorted(FORMAT_READERS))}")
    return FORMAT_READERS[method](q, where)
