"""The calibration observer: an identity module the ``calibrate`` pass puts in front of linears
to record what flows into them. It lives here, not with the pass, so the verifier can recognise
a stray one without importing the passes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qcompiler.errors import CalibrationError

__all__ = ["ActivationObserver", "FeatureStats"]


@dataclass
class FeatureStats:
    absmax: torch.Tensor          # [K] float32, max |x| per input feature over all rows seen
    rows: int                     # rows seen
    samples: torch.Tensor         # [S, K] float32 rows kept for error estimates in the report


class ActivationObserver(nn.Module):
    """Identity that records what flows through it."""

    def __init__(self, layers: list[str], max_samples: int):
        super().__init__()
        self.layers = layers
        self.max_samples = max_samples
        self.absmax: torch.Tensor | None = None
        self.rows = 0
        self.samples: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        if flat.numel() and not torch.isfinite(flat).all():
            raise CalibrationError(f"non-finite activations reach layer(s) {', '.join(self.layers)}",
                                   hint="the float model itself produces NaN/Inf on this data: check it in fp32")
        amax = flat.abs().amax(dim=0) if flat.shape[0] else flat.new_zeros(flat.shape[1])
        self.absmax = amax if self.absmax is None else torch.maximum(self.absmax, amax)
        self.rows += flat.shape[0]
        kept = sum(s.shape[0] for s in self.samples)
        if kept < self.max_samples and flat.shape[0]:
            step = max(1, flat.shape[0] // max(1, (self.max_samples - kept)))
            self.samples.append(flat[::step][: self.max_samples - kept].cpu())
        return x

    def stats(self) -> FeatureStats:
        return FeatureStats(self.absmax.cpu(), self.rows, torch.cat(self.samples) if self.samples else
                            torch.empty(0, self.absmax.shape[0]))
