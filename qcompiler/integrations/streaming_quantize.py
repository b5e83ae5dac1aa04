"""``from_pretrained(path, quantization_config=QCompilerConfig(...))`` quantizes while streaming the
checkpoint, as :func:`qcompiler.from_pretrained` does: peak memory ~ the quantized model + one float block.

transformers builds its model on ``meta`` and would then read every float tensor into it. Instead,
in ``_process_model_before_weight_loading`` (:func:`stream_into`), qcompiler's streaming loader
reads the same checkpoint files block by block and compiles each block; its modules replace the
skeleton's children. transformers then finds no state to fill: the model's state dict is hidden
for the length of its loading pass (a ``state_dict`` hook, removed afterwards), so no float tensor
is materialized and nothing is re-initialized (every module is marked initialized). Its one
remaining step, re-making non-persistent buffers (rotary tables) as empty tensors, is undone by
:func:`finish_streaming`, which puts every tensor back as it was and checks that none is on ``meta``.

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

__all__ = ["StreamedLoad", "stream_into", "finish_streaming", "loader_placement"]


@dataclass
class StreamedLoad:
    """What :func:`finish_streaming` needs: the compiled model, every tensor as loaded, the hook."""
    qm: Any
    tensors: dict[str, tuple[nn.Module, str, torch.Tensor, bool]]  # name -> (owner, attr, tensor, is parameter)
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


def _all_tensors(model: nn.Module) -> dict[str, tuple[nn.Module, str, torch.Tensor, bool]]:
    out = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        dot = mod_name + "." if mod_name else ""
        for attr, p in mod._parameters.items():
            if p is not None:
                out[dot + attr] = (mod, attr, p, True)
        for attr, b in mod._buffers.items():
            if b is not None:
                out[dot + attr] = (mod, attr, b, False)
    return out


def stream_into(model: nn.Module, checkpoint_files: list[str], config, placement: dict[str, Any]) -> StreamedLoad:
    """Compiles the checkpoint block by block into ``model`` (transformers' ``meta`` skeleton)."""
    import qcompiler

    root = Path(checkpoint_files[0]).parent
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    with torch.device("cpu"):  # transformers calls this hook under its init context's default device, meta
        qm = qcompiler.from_pretrained(root, config.scheme, config.calibration_data, dtype=dtype,
                                       backend=config.backend, progress=False, **placement, **config.options)
    for name, child in list(qm.model.named_children()):
        setattr(model, name, child)  # the compiled regions and loaded embeddings, in transformers' model
    state = set(model.state_dict())
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for target, source in list(tied.items()):  # e.g. lm_head.weight, when lm_head is now a region
        if target not in state or source not in state:
            tied.pop(target)
    tensors = _all_tensors(model)
    for mod in model.modules():
        mod._is_hf_initialized = True  # nothing of it is initialized again
    hook = model._register_state_dict_hook(_hide_state)
    model._keys_to_ignore_on_load_unexpected = {".*"}  # every checkpoint key was read by qcompiler's loader
    model.__dict__["_qcompiler_model"] = qm
    return StreamedLoad(qm, tensors, hook)


def _hide_state(module, state_dict, prefix, local_metadata):
    state_dict.clear()  # transformers' loading pass sees nothing to fill (see the module docstring)


def finish_streaming(model: nn.Module, loaded: StreamedLoad) -> nn.Module:
    """After transformers' loading pass: every tensor back as qcompiler's loader left it."""
    from qcompiler.loading.errors import CheckpointError

    loaded.hook.remove()
    for name, (owner, attr, t, is_param) in loaded.tensors.items():
        table = owner._parameters if is_param else owner._buffers
        if table.get(attr) is not t:
            table[attr] = t
    left = [n for n, (_, _, t, _) in loaded.tensors.items() if t.device.type == "meta"]
    if left and not getattr(loaded.qm.model, "hf_device_map", None):
        raise CheckpointError(f"tensors left without values after loading: {left[:4]}")
    return model
