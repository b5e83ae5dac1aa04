"""Quantization decisions, as frozen dataclasses stored in ``node.meta[SPEC_KEY]``.

Annotation passes decide *what* happens to a linear node and write a :class:`LinearQuantSpec`;
later passes read it and materialize the decision. Nothing else about the decision lives anywhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

__all__ = [
    "SPEC_KEY",
    "LAYER_KEY",
    "ActGranularity",
    "WeightGranularity",
    "OutlierMode",
    "WeightRefs",
    "LinearQuantSpec",
    "get_spec",
    "set_spec",
    "update_spec",
]

SPEC_KEY = "qcompiler.spec"
LAYER_KEY = "qcompiler.layer"  # the layer (module path) a linear node came from, spec or not


class ActGranularity(enum.Enum):
    ROW = "row"        # one absmax per row of X (vector-wise, LLM.int8())
    TENSOR = "tensor"  # one absmax for all of X (the seed's first figure)
    NONE = "none"      # activations stay in float (weight-only schemes)


class WeightGranularity(enum.Enum):
    CHANNEL = "channel"  # one absmax per output channel of W
    TENSOR = "tensor"


class OutlierMode(enum.Enum):
    NONE = "none"        # no decomposition
    STATIC = "static"    # outlier columns fixed at compile time from calibration
    DYNAMIC = "dynamic"  # outlier columns found on every forward from the actual input


@dataclass(frozen=True)
class WeightRefs:
    """Names of the buffers (get_attr targets) holding a linear's quantized weight."""

    qweight: str
    scale: str
    outlier_weight: str | None = None  # fp W[:, outlier_idx], static mode only
    outlier_idx: str | None = None     # int64 indices of the outlier input dims
    bias: str | None = None            # the float bias, unchanged


@dataclass(frozen=True)
class LinearQuantSpec:
    """How one linear node ``y = x @ W.T + b`` is quantized."""

    layer: str                       # a stable, human-readable name (module path)
    in_features: int
    out_features: int
    act: ActGranularity = ActGranularity.ROW
    weight: WeightGranularity = WeightGranularity.CHANNEL
    outliers: OutlierMode = OutlierMode.NONE
    threshold: float = 6.0
    outlier_idx: tuple[int, ...] = ()
    weights: WeightRefs | None = None  # set by quantize-weights
    lowering: str = "reference"       # which implementation runs it; set by lowering passes
    notes: tuple[str, ...] = field(default=())  # fallbacks and other facts for the report

    @property
    def op_name(self) -> str:
        if self.act is ActGranularity.NONE:
            return "weight-only"
        base = f"int8 {self.act.value}x{self.weight.value}"
        if self.outliers is OutlierMode.STATIC:
            return f"{base} + fp outliers ({len(self.outlier_idx)} static)"
        if self.outliers is OutlierMode.DYNAMIC:
            return f"{base} + fp outliers (dynamic, t={self.threshold:g})"
        return base


def get_spec(node) -> LinearQuantSpec | None:
    return node.meta.get(SPEC_KEY)


def set_spec(node, spec: LinearQuantSpec) -> None:
    node.meta[SPEC_KEY] = spec


def update_spec(node, **changes) -> LinearQuantSpec:
    spec = replace(node.meta[SPEC_KEY], **changes)
    node.meta[SPEC_KEY] = spec
    return spec
