"""``from_pretrained(..., device_map=...)``: the placement of a streamed model over a device map.

The map can only be checked once the skeleton and its blocks are known, so
:func:`placement_for` returns a :class:`DeferredPlacement` that ``from_pretrained`` binds to the
skeleton (``bind``) before any weight is read; it then acts as a
:class:`~qcompiler.loading.placement.MappedPlacement`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from qcompiler.errors import ConfigError
from qcompiler.loading.device_map import OFFLOAD_TIERS, resolve_device_map
from qcompiler.loading.placement import MappedPlacement

__all__ = ["placement_for", "DeferredPlacement"]


def _bytes(v: Any) -> int:
    from accelerate.utils import convert_file_size_to_int

    return convert_file_size_to_int(v) if isinstance(v, str) else int(v)


def _guess_main(device_map, max_memory) -> torch.device:
    """The device whose peak memory the report records (the map's first GPU, else the CPU)."""
    if isinstance(device_map, Mapping):
        gpus = [v for v in device_map.values() if v not in OFFLOAD_TIERS and str(v) != "cpu"]
    else:
        keys = list(max_memory) if isinstance(max_memory, Mapping) else []
        gpus = [k for k in keys if k not in OFFLOAD_TIERS] if keys else ([0] if torch.cuda.is_available() else [])
    if not gpus or not torch.cuda.is_available():
        return torch.device("cpu")
    g = gpus[0]
    return torch.device(f"cuda:{g}" if isinstance(g, int) else g)


class DeferredPlacement:
    """A device map waiting for its skeleton; after :meth:`bind`, a MappedPlacement."""

    def __init__(self, device_map, max_memory, offload_folder, scheme: str, dtype: torch.dtype, main: torch.device):
        self._request = (device_map, max_memory, offload_folder, scheme, dtype)
        self._mapped: MappedPlacement | None = None
        self.input_device = main
        self.plan = None

    def bind(self, model: nn.Module, units: list[str]) -> None:
        device_map, max_memory, offload_folder, scheme, dtype = self._request
        self.plan = resolve_device_map(model, device_map, units, max_memory=max_memory, scheme=scheme, dtype=dtype)
        self._mapped = MappedPlacement(self.plan, offload_folder)
        self.input_device = self.plan.main_device

    def check_memory(self, reader, slots, block_keys: list[list[str]], dtype: torch.dtype, prefix: str) -> None:
        """Each GPU must hold its largest block twice (float + quantized copy while both live)."""
        from qcompiler.loading.from_pretrained import _check_device_memory

        _, max_memory, *_ = self._request
        for dev in self.plan.devices:
            if dev.type != "cuda":
                continue
            mine = [keys if self.plan.execution_device(f"{prefix}.{i}") == dev else []
                    for i, keys in enumerate(block_keys)]
            cap = None
            if isinstance(max_memory, Mapping):
                cap = next((_bytes(v) for k, v in max_memory.items() if k in (dev.index, str(dev))), None)
            _check_device_memory(reader, slots, mine, dtype, dev, cap, prefix)

    def device_for(self, name):
        return self._mapped.device_for(name)

    def place(self, path, calls):
        return self._mapped.place(path, calls)

    def done(self, model, path):
        self._mapped.done(model, path)

    def outer_done(self, model):
        self._mapped.outer_done(model)

    def is_offloaded(self, name):
        return self._mapped.is_offloaded(name)

    def finish(self, model):
        return self._mapped.finish(model)


def placement_for(device_map, max_memory, offload_folder, scheme: str, dtype: torch.dtype):
    """(placement, main device, max_memory for the single-device check) for ``from_pretrained``;
    the map itself is checked against the skeleton, in :meth:`DeferredPlacement.bind`."""
    if max_memory is not None and not isinstance(max_memory, Mapping):
        raise ConfigError(f"max_memory={max_memory!r} with a device_map must be a dict {{device: bytes}}",
                          hint='e.g. max_memory={0: "20GiB", 1: "20GiB", "cpu": "60GiB"}')
    main = _guess_main(device_map, max_memory)
    return DeferredPlacement(device_map, max_memory, offload_folder, scheme, dtype, main), main, None
