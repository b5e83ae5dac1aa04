"""How many bytes a model's tensors take, each byte of storage counted once.

Tied weights (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) appear under two names
in ``state_dict()``; summing per name counts them twice and overstates what quantization saves.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["unique_bytes", "state_bytes", "tied_weights", "tied_layer_notes", "larger_than_float_note"]


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of ``tensors``, where tensors sharing storage count the union of what they cover."""
    spans: dict[object, list[tuple[int, int]]] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        key = (t.device, ptr) if ptr else id(storage)  # meta tensors have no address
        start = t.storage_offset() * t.element_size()
        extent = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + 1  # elements spanned
        spans.setdefault(key, []).append((start, start + extent * t.element_size()))
    total = 0
    for intervals in spans.values():
        end = -1
        for a, b in sorted(intervals):
            if b > end:
                total += b - max(a, end)
                end = b
    return total


def state_bytes(model: nn.Module) -> int:
    """Parameters and buffers of ``model``, each storage once."""
    return unique_bytes(model.state_dict(keep_vars=True).values())


def tied_weights(model: nn.Module) -> dict[str, list[str]]:
    """``{parameter name: the other names of the same tensor}`` for every tied parameter."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {n: [o for o in names if o != n] for names in by_id.values() if len(names) > 1 for n in names}


def tied_layer_notes(model: nn.Module, layers: Iterable[str], compiled: nn.Module) -> dict[str, str]:
    """For each quantized layer in ``layers`` whose float weight is tied to a tensor the compiled
    model still holds in float (GPT-2's ``lm_head`` and ``wte``): a note saying its float bytes are
    not freed, so the row's "before" is not a saving."""
    tied, kept = tied_weights(model), compiled.state_dict(keep_vars=True)
    notes = {}
    for layer in layers:
        still_float = [n for n in tied.get(f"{layer}.weight", []) if n in kept]
        if still_float:
            notes[layer] = (f"weight tied to {', '.join(still_float)}, which stays in float: quantizing this "
                            "layer adds its quantized copy, it frees nothing")
    return notes


def larger_than_float_note(bytes_before: int, bytes_after: int, outliers: int | None, in_features: int) -> str | None:
    """A note for a quantized layer stored in more bytes than its float weight (``threshold=0``
    makes every column an outlier, kept in float next to the int8 copy), else None."""
    if not bytes_before or bytes_after <= bytes_before:
        return None
    why = (f": {outliers} of {in_features} input columns are outliers, kept in float next to the int8 copy "
           "(a higher threshold keeps fewer)" if outliers else "")
    return (f"stored in {bytes_after / 1024:.1f} KiB, more than the float weight's "
            f"{bytes_before / 1024:.1f} KiB{why}")
