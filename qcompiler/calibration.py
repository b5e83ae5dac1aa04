"""Calibration data: what users pass, normalized to ``(args, kwargs)`` and checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch.utils._pytree import tree_flatten, tree_map

from qcompiler.errors import CalibrationError

__all__ = ["CalibrationSet", "as_call"]


def as_call(item: Any, index: int | None = None) -> tuple[tuple, dict]:
    """A tensor, a tuple/list of positional args, or a dict of keyword args -> ``(args, kwargs)``."""
    if isinstance(item, torch.Tensor):
        return (item,), {}
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    if isinstance(item, dict) or (hasattr(item, "keys") and hasattr(item, "__getitem__")):
        return (), {str(k): item[k] for k in item.keys()}
    where = "" if index is None else f" item {index}"
    raise CalibrationError(f"calibration data{where} is a {type(item).__name__}",
                           hint="give a tensor, a tuple of positional args, or a dict of keyword args")


@dataclass
class CalibrationSet:
    calls: list[tuple[tuple, dict]]

    @classmethod
    def from_user(cls, data: Iterable[Any] | None, *, max_items: int | None = None) -> "CalibrationSet | None":
        if data is None:
            return None
        if isinstance(data, (torch.Tensor, dict)):
            raise CalibrationError("calibration_data is a single batch, not a list of batches",
                                   hint="wrap it in a list: calibration_data=[batch]")
        calls = []
        for i, item in enumerate(data):
            if max_items is not None and i >= max_items:
                break
            args, kwargs = as_call(item, i)
            for leaf in tree_flatten((args, kwargs))[0]:
                if isinstance(leaf, torch.Tensor) and leaf.is_meta:
                    raise CalibrationError(f"calibration item {i} holds a tensor on the 'meta' device, which "
                                           "has no values", hint="give real tensors on the model's device")
                if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and not torch.isfinite(leaf).all():
                    bad = "NaN" if torch.isnan(leaf).any() else "Inf"
                    raise CalibrationError(f"calibration item {i} holds {bad} values",
                                           hint="clean the data: observers would record meaningless ranges")
            calls.append((args, kwargs))
        if not calls:
            raise CalibrationError("calibration_data is empty",
                                   hint="give at least one batch, or leave it out to use dynamic outliers")
        return cls(calls)

    def __iter__(self) -> Iterator[tuple[tuple, dict]]:
        return iter(self.calls)

    def __len__(self) -> int:
        return len(self.calls)

    def to(self, device: torch.device | str) -> "CalibrationSet":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return CalibrationSet([tree_map(move, c) for c in self.calls])
