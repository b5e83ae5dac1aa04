"""Device maps: which device each part of a model lives on, checked and put in block form.

A device map is accelerate's: ``{module_path: device}`` with devices ``0`` / ``"cuda:1"`` (a GPU),
``"cpu"`` or ``"disk"``, or ``"auto"`` (accelerate's ``infer_auto_device_map`` fills the GPUs in
order, then the CPU, then the disk, within ``max_memory``). :func:`resolve_device_map` checks a
map against the model (every device exists, every path is a module, every tensor is placed, no
block is split across devices) and rewrites entries that hold whole groups of blocks
(``"model.layers": 0``, ``"": "cpu"``) into one entry per block, per head and per other module,
so each unit that qcompiler quantizes sits on exactly one device.

As in accelerate, ``"cpu"`` and ``"disk"`` entries are *offloaded* when the map also names a GPU:
their weights stay in host RAM / on disk and the block runs on the first GPU of the map (the
execution device). On a map without a GPU, ``"cpu"`` blocks run on the CPU and ``"disk"`` ones are
offloaded and run on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from qcompiler.errors import ConfigError

__all__ = ["DeviceMapPlan", "resolve_device_map", "target_dtype_for", "OFFLOAD_TIERS"]

OFFLOAD_TIERS = ("cpu", "disk")

# schemes whose linear weights are stored in 4 bits (accelerate sizes them with CustomDtype.INT4)
_FOUR_BIT = ("w4-weight-only", "nf4", "gptq-w4", "awq-w4")


def target_dtype_for(scheme: str):
    """The dtype accelerate should size a quantized linear weight with when it makes an ``"auto"`` map."""
    from accelerate.utils import CustomDtype

    return CustomDtype.INT4 if scheme in _FOUR_BIT else torch.int8


def _normalize_device(value: Any, key: str) -> str | int:
    """``0`` / ``"cuda:0"`` / ``torch.device`` -> accelerate's form (int for a GPU, else a string),
    after checking that the device exists."""
    if isinstance(value, bool):
        raise ConfigError(f"device_map[{key!r}] = {value!r} is not a device", hint="use 0, 'cuda:1', 'cpu' or 'disk'")
    if value in OFFLOAD_TIERS:
        return value
    if value == "meta":
        raise ConfigError(f"device_map[{key!r}] = 'meta': a block on meta would have no weights",
                          hint="offload it with 'disk' (weights on disk, run on the execution device)")
    try:
        dev = torch.device(f"cuda:{value}" if isinstance(value, int) else value)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device_map[{key!r}] = {value!r} is not a device",
                          hint="use a GPU index (0), 'cuda:1', 'cpu' or 'disk'") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ConfigError(f"device_map[{key!r}] = {value!r}: qcompiler places blocks on CUDA GPUs, 'cpu' or 'disk'")
    index = dev.index if dev.index is not None else 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise ConfigError(f"device_map[{key!r}] = {value!r}, but this machine has "
                          + (f"{count} GPU(s) (cuda:0..cuda:{count - 1})" if count else "no CUDA GPU"),
                          hint="name a GPU that exists, or 'cpu' / 'disk'")
    return index


def _covers(entry: str, name: str) -> bool:
    return entry == "" or name == entry or name.startswith(entry + ".")


@dataclass
class DeviceMapPlan:
    """A checked device map in block form and what follows from it."""

    entries: dict[str, str | int]          # module path -> device (accelerate's form), one unit per entry
    units: list[str]                       # paths qcompiler quantizes as one piece (blocks, heads)
    main: str | int = "cpu"                # the execution device of offloaded entries (and of the inputs)
    offloaded_tiers: tuple[str, ...] = field(default=("disk",))

    @classmethod
    def make(cls, entries: dict[str, str | int], units: list[str]) -> "DeviceMapPlan":
        gpus = [d for d in entries.values() if d not in OFFLOAD_TIERS]
        main = gpus[0] if gpus else "cpu"
        return cls(entries, units, main, ("disk",) if main == "cpu" else OFFLOAD_TIERS)

    def entry_of(self, name: str) -> str:
        """The entry placing the module or tensor ``name`` (the longest path covering it)."""
        best = None
        for e in self.entries:
            if _covers(e, name) and (best is None or len(e) > len(best)):
                best = e
        if best is None:
            raise ConfigError(f"device_map places no module holding {name!r}",
                              hint="add an entry for it (or for a module above it)")
        return best

    def is_offloaded(self, name: str) -> bool:
        return self.entries[self.entry_of(name)] in self.offloaded_tiers

    def execution_device(self, name: str) -> torch.device:
        """Where the module or tensor ``name`` is computed (and, when not offloaded, stored)."""
        d = self.entries[self.entry_of(name)]
        d = self.main if d in self.offloaded_tiers else d
        return torch.device(f"cuda:{d}" if isinstance(d, int) else d)

    @property
    def main_device(self) -> torch.device:
        return torch.device(f"cuda:{self.main}" if isinstance(self.main, int) else self.main)

    @property
    def devices(self) -> list[torch.device]:
        """The devices blocks are computed on (each once), for memory checks and reports."""
        return list(dict.fromkeys(self.execution_device(e) for e in self.entries))

    def describe(self) -> str:
        by_device: dict[str, list[str]] = {}
        for e, d in self.entries.items():
            by_device.setdefault(str(d), []).append(e or "<model>")
        return "; ".join(f"{d}: {len(es)} module(s)" for d, es in by_device.items())


def _auto_map(model: nn.Module, max_memory, scheme: str, dtype: torch.dtype) -> dict[str, Any]:
    from accelerate import infer_auto_device_map

    from qcompiler.capture import _is_linear_module

    # Quantized sizes: every linear weight in the scheme's storage dtype, the rest as loaded.
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if n and _is_linear_module(m)}
    special = {n: dtype for n, _ in model.named_parameters() if n not in linear_weights}
    return dict(infer_auto_device_map(model, max_memory=max_memory,
                                      no_split_module_classes=list(getattr(model, "_no_split_modules", None) or []),
                                      dtype=target_dtype_for(scheme), special_dtypes=special))


def _expand(model: nn.Module, entries: dict[str, Any], units: list[str]) -> dict[str, Any]:
    """Entries holding a unit (and more) replaced by one entry per child, down to the units."""
    out: dict[str, Any] = {}
    stack = list(entries.items())
    while stack:
        path, dev = stack.pop(0)
        inside = [u for u in units if _covers(path, u) and u != path]
        if not inside:
            out[path] = dev
            continue
        mod = model.get_submodule(path) if path else model
        own = [n for n, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))]
        if own:
            raise ConfigError(f"device_map entry {path or '<model>'!r} holds tensors of its own ({own[:3]}) and the "
                              f"blocks {inside[:2]}...", hint="give its blocks their own entries")
        for child, _ in mod.named_children():
            full = f"{path}.{child}" if path else child
            if full not in entries:
                stack.append((full, dev))
    return out


def resolve_device_map(model: nn.Module, device_map: str | Mapping[str, Any], units: list[str], *,
                       max_memory: Mapping | None = None, scheme: str = "int8-outlier",
                       dtype: torch.dtype = torch.float16) -> DeviceMapPlan:
    """Checks ``device_map`` against ``model`` (a skeleton on ``meta`` is fine) and puts it in block
    form; ``units`` are the module paths quantized as one piece (the blocks and the heads)."""
    if isinstance(device_map, str):
        if device_map != "auto":
            raise ConfigError(f"device_map={device_map!r}", hint="use 'auto' or a dict {module_path: device}")
        device_map = _auto_map(model, max_memory, scheme, dtype)
    elif not isinstance(device_map, Mapping) or not device_map:
        raise ConfigError(f"device_map must be 'auto' or a non-empty dict {{module_path: device}}, got {device_map!r}")
    modules = dict(model.named_modules())
    entries: dict[str, str | int] = {}
    for key, value in device_map.items():
        if not isinstance(key, str) or key not in modules:
            near = [n for n in modules if n and isinstance(key, str) and n.endswith(str(key).rsplit(".", 1)[-1])][:3]
            raise ConfigError(f"device_map names {key!r}, which is not a module of {type(model).__name__}",
                              hint=f"use module paths as model.named_modules() gives them"
                                   + (f" (e.g. {', '.join(near)})" if near else ""))
        entries[key] = _normalize_device(value, key)
    for u in units:
        split = [e for e in entries if e != u and _covers(u, e)]
        if split:
            raise ConfigError(f"device_map splits {u!r} over entries {split[:3]}: qcompiler quantizes it as one piece",
                              hint=f"place {u!r} whole on one device")
    tensors = [n for n, _ in list(model.named_parameters()) + list(model.named_buffers())]
    persistent = set(model.state_dict(keep_vars=True))
    unplaced = [n for n in tensors if n in persistent and not any(_covers(e, n) for e in entries)]
    if unplaced:
        owners = list(dict.fromkeys(n.rpartition(".")[0] for n in unplaced))
        raise ConfigError(f"device_map leaves {len(unplaced)} tensor(s) unplaced, in modules {owners[:4]}",
                          hint="add entries for them (or for a module above them)")
    return DeviceMapPlan.make(_expand(model, entries, units), units)
