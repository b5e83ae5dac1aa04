"""A model (or input) on the ``meta`` device has shapes but no values: there is nothing to
calibrate or quantize, and every pass would fail somewhere unrelated. compile says so up front."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from qcompiler.errors import ConfigError, UnsupportedError

__all__ = ["check_not_meta"]


def check_not_meta(model: nn.Module, example: tuple[tuple, dict]) -> None:
    """Raises :class:`UnsupportedError` naming the first ``meta`` parameter or buffer of ``model``,
    or :class:`ConfigError` for a ``meta`` tensor in the example call (calibration items are
    checked by :class:`~qcompiler.calibration.CalibrationSet`)."""
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if on_meta:
        raise UnsupportedError(
            f"{len(on_meta)} parameter(s)/buffer(s) of the model are on the 'meta' device (first: '{on_meta[0]}'): "
            "they have shapes but no values, so there is nothing to calibrate or quantize",
            hint="load the weights before compile (e.g. from_pretrained without device_map='meta', or "
                 "model.to_empty(device='cpu') then load_state_dict(...))")
    leaves: list[Any] = tree_flatten(example)[0]
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in leaves):
        raise ConfigError("example_inputs hold a tensor on the 'meta' device, which has no values",
                          hint="give real tensors on the model's device")
