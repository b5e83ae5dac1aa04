"""``compile(model, ..., inplace=True)``: quantize a model already in memory without copying it.

The model's blocks are compiled one at a time on the calls they receive (as ``from_pretrained``
does from disk), so each block's float weights are released as soon as the block is done: the
peak is the float model plus one block's quantized copy, against about twice the float model
plus the quantized one for the default copying compile. A model without a list of blocks is
compiled as one unit, without a copy. The model passed in *becomes* the compiled model's inner
module: do not use it afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qcompiler.loading.block_stream import outer_linear_paths, record_calls, run_blocks
from qcompiler.loading.model_assembly import assemble
from qcompiler.loading.skeleton import find_blocks
from qcompiler.loading.unit_compile import UnitPlan, compile_unit
from qcompiler.memory_usage import PeakMemory, storage_bytes

__all__ = ["compile_inplace", "plan_for"]


def plan_for(scheme: str, options: dict, backend: str, capture: str, calib, progress: bool, verify: bool,
             allow_fallback: bool, pipeline: str | None, whole_graph: bool) -> UnitPlan:
    from qcompiler.errors import ConfigError

    if pipeline is not None or whole_graph:
        raise ConfigError("inplace=True compiles block by block with the scheme's own pipeline",
                          hint="leave out pipeline= and whole_graph=, or compile with inplace=False")
    return UnitPlan(scheme, dict(options), backend, capture, calib is not None, progress, verify, allow_fallback)


def _device_of(model: nn.Module) -> torch.device:
    return next((t.device for t in model.parameters()), torch.device("cpu"))


def compile_inplace(model: nn.Module, plan: UnitPlan, calls: list[tuple[tuple, dict]],
                    calibrate_on: str = "float") -> Any:
    """Compiles ``model`` in place, block by block; ``calls`` are the calibration (or example)
    calls. Returns a QuantizedModel wrapping ``model`` itself."""
    from qcompiler.serialize.record import weights_digest

    dev = _device_of(model)
    with PeakMemory(dev) as peak:
        before = storage_bytes(model)
        base = weights_digest(model)
        model.eval()
        found = find_blocks(model)
        if found is None:
            units = [compile_unit(model, "", calls, plan)]
            root = units[0].root
        else:
            prefix, blocks = found
            first = record_calls(model, blocks[0], calls)
            units, float_last = run_blocks(blocks, prefix, first, plan, bring_in=lambda i: None,
                                           calibrate_on=calibrate_on, progress=plan.progress)
            for head in outer_linear_paths(model, prefix):
                module = model.get_submodule(head)
                head_calls = record_calls(model, module, calls,
                                          override=(blocks[-1], float_last) if float_last is not None else None)
                res = compile_unit(module, head, head_calls, plan)
                if res.root is not module:
                    parent, _, attr = head.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, attr, res.root)
                units.append(res)
            root = model
        qm = assemble(root, units, scheme=plan.scheme, options=dict(plan.options), backend=plan.backend,
                      capture=plan.capture, example=calls[0], bytes_before=before, device=dev)
    qm.record.base = base
    qm.report().notes[-1] = "compiled in place, block by block" if found is not None else "compiled in place"
    mem = qm.report().memory
    mem.peak_device_bytes, mem.peak_host_bytes, mem.host_bytes_at_start = peak.device_bytes, peak.host_bytes, \
        peak.host_start
    return qm
