"""``from_pretrained(path, quantization_config=QCompilerConfig(...))`` quantizes while streaming the
checkpoint, as :func:`qcompiler.from_pretrained` does: peak memory ~ the quantized model + one float block.

transformers builds its model on ``meta`` and would then read every float tensor into it. Instead,
``_process_model_before_weight_loading`` (:func:`hide_state`) hides the skeleton's state dict from
transformers' loading pass (a ``state_dict`` hook) and marks every module initialized, so no float
tensor is read and nothing is initialized; the skeleton stays on ``meta``. Then
``_process_model_after_weight_loading`` (:func:`stream_into`), outside transformers' init contexts
(meta default device, weight tying switched off), removes the hook and runs qcompiler's streaming
loader on the same checkpoint files: each block read, compiled, its float weights freed. Its
modules replace the skeleton's children.

The device map goes to qcompiler's loader (``update_device_map`` hands transformers ``None``, so
it neither places nor dispatches the model a second time); ``max_memory`` of ``from_pretrained`` is
not given to quantizers: pass a dict device map, or use :func:`qcompiler.from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcompiler.errors import UnsupportedError

__all__ = ["StreamedLoad", "hide_state", "stream_into", "loader_placement"]


@dataclass
class StreamedLoad:
    """Between the two hooks: the checkpoint files, where the blocks go, the state_dict hook."""
    files: list[str]
    placement: dict[str, Any]
    hook: Any


def loader_placement(device_map: Any) -> dict[str, Any]:
    """``device=`` or ``device_map=`` for :func:`qcompiler.from_pretrained`, from transformers' ``device_map``."""
    if device_map is None:
        return {}
    if isinstance(device_map, (str, torch.device, int)) and str(device_map) not in ("auto", "balanced",
                                                                                  "balanced_low_0", "sequential"):
        return {"device": torch.device(device_map) if not isinstance(device_map, int) else torch.device("cuda", device_map)}
    if isinstance(device_map, dict) and len(set(map(str, device_map.values()))) == 1 and "" in device_map:
        return loader_placement(device_map[""])
    return {"device_map": device_map}


def hide_state(model: nn.Module, checkpoint_files: list[str], device_map: Any) -> StreamedLoad:
    """transformers' loading pass finds nothing to read or initialize in ``model`` (still ``meta``)."""
    for mod in model.modules():
        mod._is_hf_initialized = True
    model._keys_to_ignore_on_load_unexpected = {".*"}  # every checkpoint key is read by qcompiler's loader
    return StreamedLoad(list(checkpoint_files), loader_placement(device_map), model._register_state_dict_hook(_hide))


def _hide(module, state_dict, prefix, local_metadata):
    state_dict.clear()


def stream_into(model: nn.Module, loaded: StreamedLoad, config) -> nn.Module:
    """Compiles the checkpoint block by block into ``model`` (transformers' ``meta`` skeleton)."""
    import qcompiler

    loaded.hook.remove()
    root = Path(loaded.files[0]).parent
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    qm = qcompiler.from_pretrained(root, config.scheme, config.calibration_data, dtype=dtype, backend=config.backend,
                                   progress=False, **loaded.placement, **config.options)
    for name, child in list(qm.model.named_children()):
        setattr(model, name, child)  # the compiled regions and loaded embeddings, in transformers' model
    for name, t in list(model.named_parameters(recurse=False)) + list(model.named_buffers(recurse=False)):
        if t.device.type == "meta":
            raise UnsupportedError(f"{type(model).__name__} keeps '{name}' on itself, outside its submodules: "
                                   f"not streamed", hint="qcompiler.from_pretrained(path, scheme)")
    state = set(model.state_dict())
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for target, source in list(tied.items()):  # e.g. lm_head.weight, when lm_head is now a region
        if target not in state or source not in state:
            tied.pop(target)
    model.__dict__["_qcompiler_model"] = qm  # not a submodule: report(), qcompiler.save
    return model
