"""``export_onnx``: a compiled model as an ONNX file.

The whole outer model is exported through ``torch.onnx.export(..., dynamo=True)``: torch.export
re-traces it, the captured regions included (qcompiler's ops have fake implementations, so they
trace), and each qcompiler op is written by its onnxscript translation (``translations.py``).
Before that the target's lowering pipeline runs on a copy of every region's graph
(``targets.py``); the compiled model itself is left as it was, except that its report now says
which ONNX operators each layer became.

Hugging Face causal LMs are exported with ``use_cache=False`` (inputs ``input_ids`` /
``attention_mask``, output ``logits``): the KV cache is not a tensor and stays out of the graph.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx

from qcompiler.backends.onnxruntime import label_lowering  # noqa: F401 - registers the pass
from qcompiler.backends.onnxruntime.matmul_nbits import record_matmul_inputs
from qcompiler.backends.onnxruntime.signature import CallSpec
from qcompiler.backends.onnxruntime.targets import ExportTarget, get_target
from qcompiler.backends.onnxruntime.translations import OPSET
from qcompiler.backends.onnxruntime.writer import EXTERNAL_DATA_BYTES, check_onnx_file, record_call, write_onnx
from qcompiler.calibration import as_call
from qcompiler.errors import ConfigError, UnsupportedError
from qcompiler.pass_manager import PassContext, PassManager, Program, Region
from qcompiler.spec import LinearQuantSpec, get_spec

__all__ = ["export_onnx", "OnnxExport", "EXTERNAL_DATA_BYTES", "lowered_view", "check_onnx_file"]

_NOTE = "ONNX lowering,"  # report notes this module writes start so (replaced on re-export)
_BUILTIN_NAMESPACES = ("aten", "prims", "_operator", "higher_order")


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote, and how to call it like the model."""

    path: Path
    target: str
    call: CallSpec
    lowering: dict[str, str]               # layer -> which ONNX operators run it
    external_data: bool
    opset: int = OPSET
    files: list[Path] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return self.call.input_names

    @property
    def output_names(self) -> list[str]:
        return self.call.output_names


def _check_translations(program: Program, table: dict, target: ExportTarget) -> None:
    for region in program.regions:
        for node in region.gm.graph.nodes:
            t = node.target
            if node.op != "call_function" or not isinstance(t, torch._ops.OpOverload):
                continue
            if t.namespace in _BUILTIN_NAMESPACES or t in table:
                continue
            spec = get_spec(node)
            where = f"layer '{spec.layer}'" if spec else f"region '{region.label}', node '{node.name}'"
            raise UnsupportedError(
                f"{where} uses {t.namespace}::{t._opname}, which has no ONNX lowering for target '{target.name}'",
                hint="compile with backend 'eager' and a scheme whose ops all have translations (the int8, "
                     "weight-only, GPTQ/AWQ and SmoothQuant schemes do), or add one to the target's table "
                     "(qcompiler/backends/onnxruntime/translations.py)")


@contextlib.contextmanager
def _lowered(qm, pipeline: str, example: tuple[tuple, dict] | None = None):
    """Runs ``pipeline`` on copies of the regions' graphs and swaps them in for the duration;
    the copies share every tensor with the originals, so this costs no weight memory. With an
    ``example`` call, lowering passes see what each int8 matmul reads on it (``ctx.state.layer_inputs``)."""
    program = qm.program
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree specs, deep-copied
        copies = [Region(r.path, _GmHolder(fx.GraphModule(r.gm, copy.deepcopy(r.gm.graph))))
                  for r in program.regions]
    ctx = PassContext()
    if example is not None:
        args, kwargs = example
        with _swapped(program, [c.gm for c in copies]):
            ctx.state.layer_inputs = record_matmul_inputs([c.gm for c in copies],
                                                          lambda: program.root(*args, **kwargs))
    PassManager(pipeline).run(Program(copies, program.root), ctx)
    with _swapped(program, [c.gm for c in copies]):
        yield Program(copies, program.root)


@contextlib.contextmanager
def _swapped(program: Program, gms: list[fx.GraphModule]):
    originals = [r.gm for r in program.regions]
    try:
        for r, gm in zip(program.regions, gms):
            r.gm = gm
        yield
    finally:
        for r, gm in zip(program.regions, originals):
            r.gm = gm


@contextlib.contextmanager
def lowered_view(qm, target: str, example_inputs: Any = None):
    """Inside the block, ``qm`` runs eagerly as ``target``'s lowering leaves it: the computation
    the file ``export_onnx(qm, example_inputs, ..., target=target)`` performs (for ``ort-cuda``:
    weight-only 8-bit linears, outliers folded where the example says so). For tests and accuracy
    checks; the compiled model is restored on exit."""
    example = None
    if example_inputs is not None:
        args, kwargs = as_call(example_inputs)
        call = record_call(qm.program.root, args, kwargs)[0]
        example = (args, {**kwargs, **call.fixed})
    with _lowered(qm, get_target(target).lowering, example):
        yield qm


class _GmHolder:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm


def _lowered_specs(lowered: Program) -> dict[str, LinearQuantSpec]:
    """layer -> its spec after the target's lowering (which says what the layer became)."""
    return {spec.layer: spec for region in lowered.regions for node in region.gm.graph.nodes
            if node.op == "call_function" and (spec := get_spec(node)) is not None and spec.lowering != "reference"}


def _update_report(qm, specs: dict[str, LinearQuantSpec], target: str, path: Path) -> None:
    report = qm.report()
    for row in report.layers:
        spec = specs.get(row.layer)
        if spec is not None:
            row.lowering = spec.lowering
            row.notes[:] = [n for n in row.notes if not n.startswith(_NOTE)]
            row.notes.append(f"{_NOTE} {target}: {spec.lowering}")
            row.notes.extend(n for n in spec.notes if n not in row.notes)
    report.notes.append(f"exported to ONNX (target {target}, opset {OPSET}): {path}")


def export_onnx(qm, example_inputs: Any, path: str | os.PathLike, dynamic_shapes: dict | None = None,
                target: str = "generic", *, external_data: bool | None = None, check: bool = True) -> OnnxExport:
    """Write the compiled model ``qm`` as ONNX at ``path``.

    >>> qm = qcompiler.compile(model, "int8-outlier", calibration_data=batches)
    >>> out = qcompiler.export_onnx(qm, batches[0], "model.onnx", target="ort-cuda")
    >>> out.input_names, out.output_names, out.lowering["encoder.layer.0.intermediate.dense"]

    ``example_inputs``: one call of the model (a tensor, a tuple of positional args or a dict of
    keyword args). ``dynamic_shapes``: ``{input name: {dim: "name" | torch.export.Dim}}``; by
    default the batch and sequence dims of every input are dynamic (all dims of integer inputs,
    all but the last of float ones). ``target``: ``generic`` (standard ONNX operators),
    ``ort-cpu`` or ``ort-cuda`` (see :mod:`qcompiler.backends.onnxruntime.targets`).
    ``external_data``: None writes the weights to ``<path>.data`` when they pass 2 GB.

    The file appears only when everything succeeded (written to a temporary folder, checked with
    ``onnx.checker`` and shape inference, then moved into place).
    """
    from qcompiler.api import QuantizedModel
    if not isinstance(qm, QuantizedModel):
        raise ConfigError(f"export_onnx takes the model qcompiler.compile returned, got {type(qm).__name__}",
                          hint="compile it first: qm = qcompiler.compile(model, scheme, calibration_data)")
    tgt = get_target(target)
    table = tgt.translations()
    specs: dict[str, LinearQuantSpec] = {}

    @contextlib.contextmanager
    def inside(example):  # around torch.onnx.export: the lowered graphs in place of the compiled ones
        with _lowered(qm, tgt.lowering, example) as lowered:
            _check_translations(lowered, table, tgt)
            specs.update(_lowered_specs(lowered))
            yield

    call, path, use_external, files = write_onnx(qm.program.root, example_inputs, path, table,
                                                 dynamic_shapes=dynamic_shapes, external_data=external_data,
                                                 check=check, inside=inside)
    _update_report(qm, specs, tgt.name, path)  # only once the file is in place
    return OnnxExport(path, tgt.name, call, {k: v.lowering for k, v in specs.items()}, use_external, OPSET, files)


