"""Where a streamed model's parts are computed and stored: one device, or a device map.

:func:`~qcompiler.from_pretrained` asks a placement where each tensor comes in, moves the calls a
block receives onto its device, and tells it when a module is final (quantized, or an outer
module with its weights): :class:`MappedPlacement` then offloads it if its entry says so
(``"disk"``: accelerate's ``offload_weight`` into ``offload_folder``; ``"cpu"`` next to a GPU: a
host-RAM state dict) and attaches accelerate's ``AlignDevicesHook`` to it right away, so the
forwards that record the next units' calls cross devices as the finished model will. At the end
the hooks are replaced by one ``accelerate.dispatch_model`` over the whole map.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from qcompiler.errors import ConfigError
from qcompiler.loading.device_map import DeviceMapPlan

__all__ = ["SingleDevice", "MappedPlacement", "dispatch", "has_offloaded", "onloaded", "attributes_to", "to_meta",
           "PRELOAD_CLASSES"]

# A region's graph reads its tensors with get_attr, never calling the modules holding them: the
# whole region must be loaded before it runs (accelerate's preload_module_classes).
PRELOAD_CLASSES = ["RegionModule"]


def _move(calls, device: torch.device):
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, calls)


class SingleDevice:
    """Everything on one device (``from_pretrained(device=...)``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.input_device = device

    def device_for(self, name: str) -> torch.device:  # noqa: ARG002
        return self.device

    def place(self, path: str, calls):  # noqa: ARG002
        return calls

    def done(self, model: nn.Module, path: str) -> None:  # noqa: ARG002
        pass

    def outer_done(self, model: nn.Module) -> None:  # noqa: ARG002
        pass

    def is_offloaded(self, name: str) -> bool:  # noqa: ARG002
        return False

    def finish(self, model: nn.Module) -> nn.Module:
        return model


def to_meta(module: nn.Module) -> None:
    """Every parameter and persistent buffer of ``module`` (and below) onto ``meta``: its values now
    live in an offload store."""
    from accelerate.utils import named_module_tensors, set_module_tensor_to_device

    for name, _ in list(named_module_tensors(module, include_buffers=True, recurse=True, remove_non_persistent=True)):
        set_module_tensor_to_device(module, name, "meta")


def attributes_to(module: nn.Module, device: torch.device) -> None:
    """Tensors a region's graph reads that are neither parameters nor buffers (accelerate does not
    move those): onto ``device``."""
    from qcompiler.capture import RegionModule
    from qcompiler.serialize.tensors import region_tensors

    for m in module.modules():
        if isinstance(m, RegionModule):
            for target, (t, entry) in region_tensors(m.gm).items():
                if entry.kind == "attribute" and t.device != device:
                    owner, _, attr = target.rpartition(".")
                    setattr(m.gm.get_submodule(owner) if owner else m.gm, attr, t.to(device))


class MappedPlacement:
    """A :class:`~qcompiler.loading.device_map.DeviceMapPlan` applied while a model is streamed in."""

    def __init__(self, plan: DeviceMapPlan, offload_folder: str | None):
        self.plan = plan
        self.input_device = plan.main_device
        tiers = set(plan.entries.values())
        if "disk" in tiers and offload_folder is None:
            disk = [e for e, d in plan.entries.items() if d == "disk"]
            raise ConfigError(f"device_map puts {disk[:3]} on 'disk' but no offload_folder was given",
                              hint="pass offload_folder='some/dir' (the quantized weights of those blocks go there)")
        self.folder = Path(offload_folder) if offload_folder is not None else None
        self.cpu_state: dict[str, torch.Tensor] = {}
        self.index: dict[str, Any] = {}
        self._hooked: list[str] = []

    def device_for(self, name: str) -> torch.device:
        try:
            return self.plan.execution_device(name)
        except ConfigError:  # a computed buffer of an unplaced module (rotary): where the inputs are
            return self.plan.main_device

    def is_offloaded(self, name: str) -> bool:
        try:
            return self.plan.is_offloaded(name)
        except ConfigError:
            return False

    def place(self, path: str, calls):
        return _move(calls, self.plan.execution_device(path))

    def _weights_map(self):
        from accelerate.utils import OffloadedWeightsLoader

        if not self.cpu_state and not self.index:
            return None
        return OffloadedWeightsLoader(state_dict=self.cpu_state, save_folder=str(self.folder) if self.folder else None,
                                      index=self.index)

    def _offload(self, module: nn.Module, path: str) -> None:
        from accelerate.utils import offload_weight, save_offload_index

        prefix = f"{path}." if path else ""
        state = {prefix + k: v for k, v in module.state_dict().items() if v.device.type != "meta"}
        if self.plan.entries[path] == "disk":
            self.folder.mkdir(parents=True, exist_ok=True)
            for name, t in state.items():
                self.index = offload_weight(t, name, str(self.folder), index=self.index)
            save_offload_index(self.index, str(self.folder))
        else:
            self.cpu_state.update({k: v.to("cpu") for k, v in state.items()})
        to_meta(module)

    def done(self, model: nn.Module, path: str) -> None:
        """The module at entry ``path`` is final: offload it if its entry says so, and hook it."""
        from accelerate.hooks import attach_align_device_hook_on_blocks

        module = model.get_submodule(path) if path else model
        off = self.plan.entries[path] in self.plan.offloaded_tiers
        if off:
            self._offload(module, path)
        attach_align_device_hook_on_blocks(
            module, execution_device={path: self.plan.execution_device(path)}, offload={path: off},
            weights_map=self._weights_map(), offload_buffers=True, module_name=path,
            skip_keys=getattr(model, "_skip_keys_device_placement", None), preload_module_classes=PRELOAD_CLASSES)
        self._hooked.append(path)

    def outer_done(self, model: nn.Module) -> None:
        """Every entry that is not a unit (embeddings, norms, rotary) has its weights: hook them."""
        for path in self.plan.entries:
            if path not in self.plan.units:
                self.done(model, path)

    def finish(self, model: nn.Module) -> nn.Module:
        from accelerate.hooks import remove_hook_from_submodules

        remove_hook_from_submodules(model)  # offloaded tensors stay on meta: they were put there first
        return dispatch(model, self.plan, state_dict=self.cpu_state or None,
                        offload_dir=str(self.folder) if self.index else None)


def dispatch(model: nn.Module, plan: DeviceMapPlan, *, state_dict: dict | None = None,
             offload_dir: str | None = None, offload_index: dict | None = None) -> nn.Module:
    """``accelerate.dispatch_model`` over ``plan``: hooks move the activations between devices and
    bring offloaded weights in for each forward (buffers too: quantized weights are buffers)."""
    from accelerate import dispatch_model

    model = dispatch_model(model, dict(plan.entries), main_device=plan.main, state_dict=state_dict,
                           offload_dir=offload_dir, offload_index=offload_index, offload_buffers=True,
                           skip_keys=getattr(model, "_skip_keys_device_placement", None),
                           preload_module_classes=PRELOAD_CLASSES)
    for path in plan.entries:
        attributes_to(model.get_submodule(path) if path else model, plan.execution_device(path))
    return model


def has_offloaded(model: nn.Module) -> bool:
    """Whether accelerate hooks hold some of ``model``'s tensors offloaded (on ``meta`` now)."""
    from accelerate.utils import has_offloaded_params

    return any(has_offloaded_params(m) and any(t.device.type == "meta" for t in m.state_dict().values())
               for m in model.modules())


@contextlib.contextmanager
def onloaded(model: nn.Module):
    """Every offloaded tensor of ``model`` brought onto the CPU for the duration (to save the model)."""
    from accelerate.utils import align_module_device, has_offloaded_params

    with contextlib.ExitStack() as stack:
        for m in model.modules():
            if has_offloaded_params(m):
                stack.enter_context(align_module_device(m, torch.device("cpu")))
        yield model
