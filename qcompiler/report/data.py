"""What was quantized, how, and what it cost: the report's data (built by
:func:`qcompiler.report.build.build_report`, drawn by :mod:`qcompiler.report.render`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qcompiler.memory_usage import MemoryUsage

__all__ = ["LayerReport", "Report"]


@dataclass
class LayerReport:
    layer: str
    region: str
    shape: tuple[int, int]               # (out_features, in_features)
    op: str                              # what the layer became
    lowering: str                        # which implementation runs it
    outlier_dims: list[int] | None       # None: dynamic or not applicable
    bytes_before: int
    bytes_after: int
    sqnr_db: float | None = None         # on the calibration rows kept for this layer
    rel_error: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    scheme: str
    backend: str
    pipeline: str
    layers: list[LayerReport]
    regions: list[str]
    split: list[tuple[str, str]]          # modules not captured whole, and why
    model_bytes_before: int
    model_bytes_after: int
    output_rel_error: float | None = None
    output_cosine: float | None = None
    notes: list[str] = field(default_factory=list)
    memory: MemoryUsage | None = None      # bytes once per storage, and the peak of the call that made it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        from qcompiler.report.render import to_json
        return to_json(self, indent)

    def to_markdown(self) -> str:
        from qcompiler.report.render import to_markdown
        return to_markdown(self)

    def __rich__(self):  # rich.print(report) draws the table
        from qcompiler.report.render import to_rich
        return to_rich(self)

    @property
    def quantized(self) -> list[LayerReport]:
        return [r for r in self.layers if r.op != "float"]

    def __str__(self) -> str:  # the same table and summary as to_markdown and the rich view, as plain text
        from qcompiler.report.render import to_text
        return to_text(self)
