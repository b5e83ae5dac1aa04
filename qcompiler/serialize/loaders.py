"""``qcompiler.load``: one entry point, one loader per checkpoint format.

The format is read from ``config.json``'s ``quantization_config.quant_method`` (a directory
without one, but with ``qcompiler.json``, is qcompiler's own); methods with no loader here go to
:func:`qcompiler.formats.load_checkpoint` (GPTQ, AWQ, compressed-tensors). A loader is a function
``(path, model, *, device, check_versions, verify, **options) -> nn.Module``; adding a format
is registering one::

    @register_loader("gptq")
    def load_gptq(path, model=None, *, device=None, **options): ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from qcompiler.serialize.errors import IntegrityError, LoadError
from qcompiler.serialize.files import DESCRIPTION_FILE

__all__ = ["load", "register_loader", "list_loaders", "quant_method_of", "Loader"]

Loader = Callable[..., nn.Module]
_LOADERS: dict[str, Loader] = {}


def register_loader(quant_method: str) -> Callable[[Loader], Loader]:
    """Decorator: ``load(dir)`` hands directories whose config names ``quant_method`` to it."""
    def deco(fn: Loader) -> Loader:
        _LOADERS[quant_method] = fn
        return fn
    return deco


def list_loaders() -> list[str]:
    return sorted(_LOADERS)


def quant_method_of(path: str | os.PathLike) -> str:
    """The checkpoint format of ``path``: ``quantization_config.quant_method`` of its config.json
    (or GPTQ's quantize_config.json / AWQ's quant_config.json, see
    :func:`qcompiler.formats.detect.detect_format`), else ``"qcompiler"`` for qcompiler's own."""
    from qcompiler.formats.detect import detect_format

    root = Path(path)
    cfg = root / "config.json"
    if cfg.is_file():
        try:
            json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IntegrityError(f"{cfg} is not valid JSON ({e})") from None
    found = detect_format(root)
    if found is not None:
        return found[0]
    if (root / DESCRIPTION_FILE).is_file() or not cfg.is_file():
        return "qcompiler"  # a missing qcompiler.json is reported by the qcompiler loader
    raise LoadError(f"{root} is a float checkpoint (config.json has no quantization_config)",
                    hint="quantize it: qcompiler.from_pretrained(dir, scheme=...)")


def load(path: str | os.PathLike, model: nn.Module | None = None, *, device: str | torch.device | None = None,
         check_versions: bool = True, verify: bool = True, **options: Any) -> nn.Module:
    """Loads a quantized model saved in ``path``.

    >>> qm = qcompiler.load("llama-int8", device="cuda")   # from the directory alone (HF models)
    >>> qm = qcompiler.load("block-int8", float_model)     # any model: re-captures float_model

    Without ``model``, a saved Hugging Face model is rebuilt from its config.json on ``meta`` and
    its tensors are read straight onto ``device`` (default: CPU): no float weights are ever made.
    With ``model`` (the float model it was compiled from) its regions are re-captured and swapped.
    Either way the outputs are bit for bit those of the saved model. ``verify=False`` skips the
    sha256 of the tensor files (their sizes are still checked). ``device_map="auto"`` or
    ``{module_path: device}`` (with ``max_memory``) spreads the model over devices with accelerate
    (see :mod:`qcompiler.loading.mapped_load`).
    """
    method = quant_method_of(path)
    loader = _LOADERS.get(method, _load_other_format)
    return loader(path, model, device=device, check_versions=check_versions, verify=verify, **options)


def _load_other_format(path, model=None, *, device=None, check_versions=True, verify=True, **options):
    """GPTQ / AWQ / compressed-tensors checkpoints: :func:`qcompiler.formats.load_checkpoint`, which
    has its own readers by quant_method (``register_format_reader``) and names those it lacks."""
    from qcompiler.formats import load_checkpoint

    if model is not None:
        raise LoadError(f"{path} is a {quant_method_of(path)} checkpoint: it loads without a float model",
                        hint=f"qcompiler.load({str(path)!r})")
    return load_checkpoint(path, device=device if device is not None else "cpu", **options)


@register_loader("qcompiler")
def _load_qcompiler(path, model=None, *, device=None, check_versions=True, verify=True, **options):
    from qcompiler.serialize.files import check_versions as _check_versions
    from qcompiler.serialize.files import read_description, read_weights
    from qcompiler.serialize.saved_model import load_with_model
    from qcompiler.serialize.standalone import load_standalone

    device_map, max_memory = options.pop("device_map", None), options.pop("max_memory", None)
    if options:
        raise LoadError(f"unknown load option(s) {', '.join(sorted(options))}")
    if device_map is not None:  # spread over devices: qcompiler.loading.mapped_load
        from qcompiler.loading.mapped_load import dispatch_loaded
        if device is not None:
            raise LoadError("load got both device= and device_map=", hint="pass one of them")
        qm = _load_qcompiler(path, model, check_versions=check_versions, verify=verify)
        from qcompiler.passes.fuse_siblings import unfuse_siblings
        unfuse_siblings(qm)  # a fused group is one storage: members placed on different devices would split it
        return dispatch_loaded(qm, Path(path), read_description(Path(path)), device_map, max_memory=max_memory)
    if model is not None:
        qm = load_with_model(path, model, check_versions=check_versions, verify=verify)
        return qm.to(device) if device is not None else qm
    root = Path(path)
    doc = read_description(root)
    if check_versions:
        _check_versions(doc)
    if not doc.get("hf_config") or not (root / "config.json").is_file():
        raise LoadError(f"{root} holds a model that is not a Hugging Face one, so it cannot be rebuilt alone",
                        hint="pass the float model it was compiled from: qcompiler.load(dir, model)")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    try:
        tensors = read_weights(root, doc, device=dev, verify=verify)
        return load_standalone(root, doc, tensors, dev, verify=verify)
    except (KeyError, TypeError) as e:
        raise IntegrityError(f"{root / DESCRIPTION_FILE} is missing or has a malformed entry: {e}") from None
