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
    "WeightFormat",
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


class WeightFormat(enum.Enum):
    """How a linear's weight is stored; selects the quantizer and the emitted ops."""

    INT8 = "int8"  # absmax int8 per channel/tensor, for the int8 x int8 matmuls (W8A8)
    UINT = "uint"  # weight-only: unsigned ``bits``-bit codes, group-wise scales, zero points
    NF4 = "nf4"    # weight-only: 4-bit NormalFloat codes, block-wise absmax (QLoRA)


@dataclass(frozen=True)
class WeightRefs:
    """Names of the buffers (get_attr targets) holding a linear's quantized weight."""

    qweight: str
    scale: str
    outlier_weight: str | None = None  # fp W[:, outlier_idx], static mode only
    outlier_idx: str | None = None     # int64 indices of the outlier input dims
    bias: str | None = None            # the float bias, unchanged
    zeros: str | None = None           # uint8 zero points per group (UINT, asymmetric only)
    scale_scale: str | None = None     # NF4 double quant: float32 absmax of the 8-bit scale codes
    scale_offset: str | None = None    # NF4 double quant: float32 [1] mean subtracted from the scales

    def buffers(self) -> tuple[str, ...]:
        """Every buffer holding the quantized weight (the bias is not part of it)."""
        return tuple(n for n in (self.qweight, self.scale, self.outlier_weight, self.outlier_idx,
                                 self.zeros, self.scale_scale, self.scale_offset) if n is not None)


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
    # weight storage (weight-only schemes); INT8 is the W8A8 default above
    format: WeightFormat = WeightFormat.INT8
    bits: int = 8
    group_size: int = 0               # input dims per scale; 0: one group per output channel
    symmetric: bool = True            # False: a zero point per group (UINT)
    double_quant: bool = False        # NF4: scales themselves stored in 8 bits (QLoRA)
    smoothing: str | None = None      # SmoothQuant: where 1/s went: "norm", "linear" or "mul"

    @property
    def op_name(self) -> str:
        if self.format is WeightFormat.UINT:
            groups = f"g{self.group_size}" if self.group_size else "per-channel"
            return f"w{self.bits} weight-only {groups}{'' if self.symmetric else ' asym'}"
        if self.format is WeightFormat.NF4:
            return f"nf4 weight-only b{self.group_size}{' +dq' if self.double_quant else ''}"
        if self.act is ActGranularity.NONE:
            return "weight-only"
        base = f"int8 {self.act.value}x{self.weight.value}"
        if self.smoothing is not None:
            base += f" +smooth:{self.smoothing}"
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
