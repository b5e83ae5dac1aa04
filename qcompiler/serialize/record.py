"""What ``compile`` did, kept on the compiled model so it can be saved, viewed and reproduced.

``compile`` fills a :class:`CompileRecord` (``qm.record``): the scheme and its options, the
pipeline that ran, the example call the model was captured with, a digest of the float weights
it started from, the graphs as captured (before any pass) and the per-feature max |x| that
calibration measured for every quantized layer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["CompileRecord", "WeightsDigest", "weights_digest"]


@dataclass(frozen=True)
class WeightsDigest:
    """A fingerprint of a model's float state: class, tensor count, bytes, sha256 of it all."""

    model_class: str
    tensors: int
    nbytes: int
    sha256: str


def _tensor_bytes(t: torch.Tensor):
    t = t.detach()
    if t.device.type == "meta":
        return b""
    return t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data


def weights_digest(model: nn.Module) -> WeightsDigest:
    """sha256 over every state-dict entry (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    state = model.state_dict()
    nbytes = 0
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
        nbytes += t.numel() * t.element_size()
    cls = type(model)
    return WeightsDigest(f"{cls.__module__}.{cls.__qualname__}", len(state), nbytes, h.hexdigest())


@dataclass
class CompileRecord:
    scheme: str
    options: dict[str, Any]                 # scheme options as given to compile
    backend: str
    capture: str                            # CaptureMethod value
    whole_graph: bool
    pipeline: str                           # the pipeline that ran, text form
    example_args: tuple                     # the call the model was captured with
    example_kwargs: dict[str, Any]
    base: WeightsDigest                     # the float model compiled
    graphs_before: dict[str, Any] = field(default_factory=dict)       # region label -> GraphSnapshot
    calibration_absmax: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> [K] max |x|
