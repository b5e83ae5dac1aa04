"""What a saved model needs to be rebuilt without its float model: the Hugging Face config (with a
``quantization_config`` block naming qcompiler) and each region's calling convention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["QUANT_METHOD", "hf_config_of", "write_generation_config", "calling_convention"]

QUANT_METHOD = "qcompiler"


def _inner(qm: nn.Module) -> nn.Module:
    return qm._modules.get("model", qm)


def hf_config_of(qm: nn.Module, record) -> dict[str, Any] | None:
    """The model's config.json as a dict, plus ``quantization_config``; None if not a HF model."""
    from qcompiler.serialize.values import to_json

    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    model = _inner(qm)
    if not isinstance(model, PreTrainedModel):
        return None
    doc = model.config.to_dict()
    if not doc.get("architectures"):
        doc["architectures"] = [type(model).__name__]
    options = {}
    for k, v in record.options.items():
        try:
            options[k] = to_json(v)
        except TypeError:
            options[k] = repr(v)
    doc["quantization_config"] = {"quant_method": QUANT_METHOD, "scheme": record.scheme, "backend": record.backend,
                                  **options}
    return doc


def write_generation_config(qm: nn.Module, where: Path) -> None:
    gen = getattr(_inner(qm), "generation_config", None)
    if gen is not None and hasattr(gen, "save_pretrained"):
        gen.save_pretrained(str(where))


def calling_convention(region: nn.Module) -> dict[str, Any] | None:
    """How a frozen region is called (tensor argument names, the output's pytree spec)."""
    from torch.utils._pytree import treespec_dumps

    spec = getattr(region, "_out_spec", None)
    method = getattr(region, "_method", None)
    if method is None:
        return None
    return {"method": method.value, "names": list(region._names),
            "out_spec": treespec_dumps(spec) if spec is not None else None}
