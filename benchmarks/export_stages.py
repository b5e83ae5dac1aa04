"""Where an ONNX export's time goes: wall seconds per stage of ``torch.onnx.export(dynamo=True)`` as
qcompiler calls it (``qcompiler.backends.onnxruntime.writer``), measured by wrapping each stage's
function while the export runs. Stages (nested stages are not subtracted from their parents):

    eager runs       the example call(s) before the export (``writer._run_example``; KV-cache exports
                     also run ``cache_layout``'s 2-token call)
    torch.export     tracing the module to an ExportedProgram (``torch.export.export``)
    decompose        the exporter's decompositions of that program (``_prepare_exported_program_for_export``)
    translate        ExportedProgram -> ONNX IR, qcompiler ops through their onnxscript translations
    fold             qcompiler's constant folding and dead-node removal (``writer._optimize``)
    save             writing the .onnx (and .data) file (``ONNXProgram.save``)

    with export_stages() as stages:
        export_float_onnx_with_cache(model, path)
    print(stages)          # {"torch.export": 12.1, "decompose": 9.8, ...}
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

__all__ = ["export_stages"]


def _targets():
    import torch
    from torch.onnx._internal.exporter import _core, _onnx_program

    from qcompiler.backends.onnxruntime import kv_cache, writer
    return [("eager runs", writer, "_run_example"), ("eager runs", kv_cache, "cache_layout"),
            ("torch.export", torch.export, "export"),
            ("decompose", _core, "_prepare_exported_program_for_export"),
            ("translate", _core, "_exported_program_to_onnx_program"),
            ("fold", writer, "_optimize"), ("save", _onnx_program.ONNXProgram, "save")]


@contextlib.contextmanager
def export_stages() -> Iterator[dict[str, float]]:
    """Seconds per stage (dict filled in while the block runs); the wrapped functions are restored after."""
    stages: dict[str, float] = {}
    saved = []
    for stage, owner, name in _targets():
        fn = getattr(owner, name)
        saved.append((owner, name, fn))

        def timed(*args, _fn=fn, _stage=stage, **kwargs):
            t = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                stages[_stage] = stages.get(_stage, 0.0) + time.perf_counter() - t

        setattr(owner, name, timed)
    try:
        yield stages
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)
