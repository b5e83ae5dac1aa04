"""``qcompiler.load(dir, device_map=...)``: a saved model spread over devices with accelerate.

The model is rebuilt on the CPU (its quantized tensors memory-mapped from the saved shards), the
map checked against it (``"auto"``: ``infer_auto_device_map`` on the quantized sizes, blocks and
regions kept whole), and ``accelerate.dispatch_model`` places it: GPU entries moved, ``"cpu"``
entries kept in host RAM, ``"disk"`` entries dropped from memory and read back, for each forward,
straight from the saved safetensors shards (no offload folder, no copy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from qcompiler.loading.device_map import resolve_device_map
from qcompiler.loading.placement import to_meta, dispatch

__all__ = ["dispatch_loaded", "saved_keys"]


def saved_keys(qm) -> dict[str, str]:
    """state_dict name in ``qm.model`` -> key of the tensor in the saved files (as ``save`` names them)."""
    from qcompiler.capture import RegionModule
    from qcompiler.serialize.tensors import outer_tensors, region_tensors

    root = qm.program.root
    out = {}
    for region in qm.program.regions:
        base = f"{region.path}.gm." if region.path else "gm."
        for target, (_, entry) in region_tensors(region.gm).items():
            if entry.kind != "attribute":
                out[base + target] = f"regions/{region.label}/{target}"
    for name in outer_tensors(root, RegionModule):
        out[name] = f"outer/{name}"
    return out


def _units(model: nn.Module, qm) -> list[str]:
    from qcompiler.loading.skeleton import find_blocks

    found = find_blocks(model)
    blocks = [f"{found[0]}.{i}" for i in range(len(found[1]))] if found else []
    inside = lambda p: any(p == b or p.startswith(b + ".") for b in blocks)  # noqa: E731
    return blocks + [r.path for r in qm.program.regions if r.path and not inside(r.path)]


def dispatch_loaded(qm, root: Path, doc: dict[str, Any], device_map, *, max_memory=None):
    """Places the loaded ``qm`` (on the CPU) over ``device_map``; returns it."""
    from accelerate import infer_auto_device_map

    model = qm.model
    units = _units(model, qm)
    if device_map == "auto":
        no_split = list(getattr(model, "_no_split_modules", None) or []) + ["RegionModule"]
        device_map = dict(infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split))
    plan = resolve_device_map(model, device_map, units)
    keys = saved_keys(qm)
    aliases = doc.get("aliases", {})
    index = {}
    for path, dev in plan.entries.items():
        if dev != "disk":
            continue
        module = model.get_submodule(path) if path else model
        prefix = f"{path}." if path else ""
        for name in module.state_dict():
            key = aliases.get(keys[prefix + name], keys[prefix + name])
            index[prefix + name] = {"safetensors_file": str(root / doc["tensors"][key]["file"]), "weight_name": key}
        to_meta(module)  # read back from the saved shard at each forward
    dispatch(model, plan, offload_index=index or None)
    qm.report().notes.append(f"placed with device_map ({plan.describe()})")
    return qm
