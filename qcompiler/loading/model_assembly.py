"""Put the units of a streamed compile together into one :class:`~qcompiler.api.QuantizedModel`:
one program (every region, in execution order), one report, one record (what ``save`` writes)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qcompiler.loading.unit_compile import UnitResult
from qcompiler.memory_usage import MemoryUsage, storage_bytes

__all__ = ["assemble", "streamed_digest"]


def streamed_digest(model: nn.Module, bytes_before: int):
    """A WeightsDigest for a model whose float weights were never all in memory: no sha256 of
    them (``load(dir)`` rebuilds from the saved tensors alone, so none is needed)."""
    from qcompiler.serialize.record import WeightsDigest

    cls = type(model)
    n = len(model.state_dict())
    return WeightsDigest(f"{cls.__module__}.{cls.__qualname__}", n, bytes_before, "")


def assemble(model: nn.Module, units: list[UnitResult], *, scheme: str, options: dict[str, Any], backend: str,
             capture: str, example: tuple[tuple, dict], bytes_before: int, device: torch.device):
    from qcompiler.api import QuantizedModel
    from qcompiler.pass_manager import Program
    from qcompiler.report import Report
    from qcompiler.serialize.record import CompileRecord

    regions = [r for u in units for r in u.regions]
    program = Program(regions, model)
    pipeline = next((u.report.pipeline for u in units if u.regions), "")
    after = storage_bytes(model)
    report = Report(scheme, backend, pipeline, [row for u in units for row in u.report.layers],
                    [r.label for r in regions], [s for u in units for s in u.split], bytes_before, after)
    report.notes.extend(f"not called in the example forward, left in float: {p}" for u in units for p in u.not_called)
    report.notes.append(f"streamed block by block from the checkpoint onto {device}")
    report.memory = MemoryUsage(bytes_before, after, device=str(device))
    ex_args, ex_kwargs = example
    record = CompileRecord(scheme, dict(options), backend, capture, False, pipeline, tuple(ex_args), dict(ex_kwargs),
                           streamed_digest(model, bytes_before), {k: v for u in units for k, v in u.before.items()},
                           {k: v for u in units for k, v in u.absmax.items()})
    return QuantizedModel(model, program, report, record)
