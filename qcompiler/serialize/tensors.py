"""Which tensors a compiled model is made of, written once each, and put back where they were.

A region contributes every parameter and persistent buffer of its graph module plus any other
tensor its graph reads (``get_attr``); the outer model contributes the state of everything that
is not a region. Tensors that are the same object under two names (tied weights) are written
once and tied again on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import fx, nn

__all__ = ["computed_buffer_dtypes", "TensorEntry", "region_tensors", "outer_tensors", "TensorTable", "set_tensor", "drop_unlisted"]


@dataclass(frozen=True)
class TensorEntry:
    kind: str            # "parameter", "buffer" or "attribute"
    requires_grad: bool = False


def _walk(root: nn.Module, skip: tuple[type, ...] = ()) -> Iterator[tuple[str, nn.Module]]:
    stack = [("", root)]
    seen: set[int] = set()
    while stack:
        prefix, mod = stack.pop()
        if id(mod) in seen or (skip and isinstance(mod, skip) and mod is not root):
            continue
        seen.add(id(mod))
        yield prefix, mod
        for name, child in reversed(list(mod._modules.items())):
            if child is not None:
                stack.append((f"{prefix}.{name}" if prefix else name, child))


def _state(root: nn.Module, skip: tuple[type, ...] = ()) -> dict[str, tuple[torch.Tensor, TensorEntry]]:
    out = {}
    for prefix, mod in _walk(root, skip):
        dot = prefix + "." if prefix else ""
        for n, p in mod._parameters.items():
            if p is not None:
                out[dot + n] = (p, TensorEntry("parameter", p.requires_grad))
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set:
                out[dot + n] = (b, TensorEntry("buffer"))
    return out


def region_tensors(gm: fx.GraphModule) -> dict[str, tuple[torch.Tensor, TensorEntry]]:
    out = _state(gm)
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in out:
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                out[node.target] = (obj, TensorEntry("attribute"))
    return out


def computed_buffer_dtypes(root: nn.Module, region_type: type) -> dict[str, str]:
    """The dtype of every non-persistent buffer outside the regions (rotary ``inv_freq``...): not
    saved, the skeleton recomputes them, in the dtype its config gives; a model that was
    ``.half()``'d holds them in float16, and the loaded model must compute as it did."""
    out = {}
    for prefix, mod in _walk(root, (region_type,)):
        dot = prefix + "." if prefix else ""
        for n, b in mod._buffers.items():
            if b is not None and n in mod._non_persistent_buffers_set:
                out[dot + n] = str(b.dtype).removeprefix("torch.")
    return out


def outer_tensors(root: nn.Module, region_type: type) -> dict[str, tuple[torch.Tensor, TensorEntry]]:
    """The state of ``root`` outside its regions (empty when the root itself is the region)."""
    if isinstance(root, region_type):
        return {}
    return _state(root, skip=(region_type,))


def _identity(t: torch.Tensor) -> tuple:
    return (t.device, t.dtype, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


class TensorTable:
    """Collects ``key -> tensor`` for one safetensors file; the same tensor under two keys becomes
    an alias, and distinct views of one storage are copied apart (safetensors forbids sharing)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.aliases: dict[str, str] = {}
        self._by_identity: dict[tuple, str] = {}
        self._storages: set[int] = set()

    def add(self, key: str, t: torch.Tensor) -> None:
        t = t.detach()
        ident = _identity(t) if t.numel() else None
        if ident is not None and ident in self._by_identity:
            self.aliases[key] = self._by_identity[ident]
            return
        out = t.cpu().contiguous()
        storage = out.untyped_storage()
        whole = out.storage_offset() == 0 and storage.nbytes() == out.numel() * out.element_size()
        if not out.numel() or not whole or storage.data_ptr() in self._storages:
            out = out.clone()  # a view into a larger storage, or one already written: its own copy
        self._storages.add(out.untyped_storage().data_ptr())
        self.tensors[key] = out
        if ident is not None:
            self._by_identity[ident] = key


def set_tensor(root: nn.Module, name: str, t: torch.Tensor, entry: TensorEntry,
               params: dict[int, nn.Parameter]) -> None:
    """Puts ``t`` at ``name`` under ``root`` as a parameter, buffer or plain attribute. ``params``
    maps id(tensor) to the Parameter made for it, so tied tensors stay one Parameter."""
    owner_path, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    owner._parameters.pop(attr, None)
    owner._buffers.pop(attr, None)
    owner.__dict__.pop(attr, None)
    if entry.kind == "parameter":
        p = params.get(id(t))
        if p is None:
            p = params[id(t)] = nn.Parameter(t, requires_grad=entry.requires_grad and t.is_floating_point())
        owner._parameters[attr] = p
    elif entry.kind == "buffer":
        owner._non_persistent_buffers_set.discard(attr)
        owner._buffers[attr] = t
    else:
        object.__setattr__(owner, attr, t)


def drop_unlisted(root: nn.Module, keep: set[str]) -> list[str]:
    """Removes parameters and persistent buffers of ``root`` not named in ``keep``."""
    dropped = []
    for name in list(_state(root)):
        if name not in keep:
            owner_path, _, attr = name.rpartition(".")
            owner = root.get_submodule(owner_path) if owner_path else root
            owner._parameters.pop(attr, None)
            owner._buffers.pop(attr, None)
            dropped.append(name)
    return dropped
