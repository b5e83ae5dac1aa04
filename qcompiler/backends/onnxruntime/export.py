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
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from qcompiler.backends.onnxruntime import label_lowering, matmul_nbits  # noqa: F401 - register passes
from qcompiler.backends.onnxruntime.signature import CallSpec, FlatCall, call_signature
from qcompiler.backends.onnxruntime.targets import ExportTarget, get_target
from qcompiler.backends.onnxruntime.translations import OPSET
from qcompiler.calibration import as_call
from qcompiler.errors import ConfigError, QCompilerError, UnsupportedError
from qcompiler.pass_manager import PassContext, PassManager, Program, Region
from qcompiler.spec import get_spec

__all__ = ["export_onnx", "OnnxExport", "EXTERNAL_DATA_BYTES"]

EXTERNAL_DATA_BYTES = 2**31 - 2**26   # protobuf's 2 GiB limit, less headroom for the graph itself
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


def _default_axes(t: torch.Tensor) -> dict[int, str]:
    """Integer inputs (ids, masks): every dim dynamic; float inputs: all but the feature dim."""
    n = t.dim() if not t.is_floating_point() else t.dim() - 1
    names = ["batch", "sequence"]
    return {i: names[i] if i < len(names) else f"dim{i}" for i in range(max(n, 0))}


def _axes_for(call: CallSpec, tensors: list[torch.Tensor], user: dict | None) -> dict[str, dict[int, Any]]:
    if user is None:
        return {n: _default_axes(t) for n, t in zip(call.input_names, tensors)}
    if not isinstance(user, dict):
        raise ConfigError("dynamic_shapes must be a dict {input name: {dim: name or torch.export.Dim}}",
                          hint=f"the inputs are: {', '.join(call.input_names)}")
    unknown = sorted(set(user) - set(call.input_names))
    if unknown:
        raise ConfigError(f"dynamic_shapes names no input {', '.join(map(repr, unknown))}",
                          hint=f"the inputs are: {', '.join(call.input_names)}")
    return {n: dict(user.get(n) or {}) for n in call.input_names}


def _export_dims(axes: dict[str, dict[int, Any]]) -> dict[str, dict[int, Any]]:
    auto = torch.export.Dim.AUTO
    return {n: {d: (auto if isinstance(v, str) else v) for d, v in dims.items()} for n, dims in axes.items()}


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
                hint="compile with a scheme whose ops export (int8-outlier, int8-vectorwise, int8-absmax, "
                     "w8-weight-only, w4-weight-only) and backend 'eager' or 'onnxruntime'")


@contextlib.contextmanager
def _lowered(program: Program, pipeline: str):
    """Runs ``pipeline`` on copies of the regions' graphs and swaps them in for the duration;
    the copies share every tensor with the originals, so this costs no weight memory."""
    originals = [r.gm for r in program.regions]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree specs, deep-copied
        copies = [Region(r.path, _GmHolder(fx.GraphModule(r.gm, copy.deepcopy(r.gm.graph))))
                  for r in program.regions]
    PassManager(pipeline).run(Program(copies, program.root), PassContext(options={"progress": False}))
    try:
        for r, c in zip(program.regions, copies):
            r.gm = c.gm
        yield Program(copies, program.root)
    finally:
        for r, gm in zip(program.regions, originals):
            r.gm = gm


class _GmHolder:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm


def _run_example(root: nn.Module, args: tuple, kwargs: dict) -> Any:
    try:
        with torch.no_grad():
            return root(*args, **kwargs)
    except QCompilerError as e:
        raise ConfigError(f"example_inputs do not fit the compiled model: {e.message}", hint=e.hint) from e
    except Exception as e:  # noqa: BLE001 - the user's inputs do not fit the model
        raise ConfigError(f"example_inputs do not fit the compiled model: {type(e).__name__}: {_first_line(e)}",
                          hint="give one call shaped like the calibration data (same feature sizes, same "
                               "keyword arguments)") from e


def _has_opaque_output(out: Any) -> bool:
    """Outputs ONNX cannot carry: a leaf that is neither a tensor nor a plain constant (a KV cache)."""
    leaves, _ = tree_flatten(out)
    return any(not isinstance(v, (torch.Tensor, int, float, bool, str, type(None))) for v in leaves)


def _record_call(root: nn.Module, args: tuple, kwargs: dict) -> tuple[CallSpec, list[torch.Tensor], Any]:
    """The call to export and the eager output. A model that returns a KV cache (a Hugging Face
    decoder) and takes ``use_cache`` is exported with ``use_cache=False``."""
    out = _run_example(root, args, kwargs)
    fixed = {}
    if _has_opaque_output(out) and "use_cache" in call_signature(root).parameters and "use_cache" not in kwargs:
        fixed = {"use_cache": False}
        out = _run_example(root, args, {**kwargs, **fixed})
    call = CallSpec.record(root, args, kwargs, fixed)
    return call, call.flatten(args, kwargs), out


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("[")]
    return (lines[0] if lines else type(e).__name__)[:400]


def _rename_dims(model, call: CallSpec, axes: dict[str, dict[int, Any]]) -> None:
    """The exporter names dynamic dims s0, s1, ...: rename them after our axes ("batch", ...)."""
    from onnxscript import ir
    graph = model.graph
    names: dict[str, str] = {}
    for value in graph.inputs:
        for d, want in axes.get(value.name, {}).items():
            if isinstance(want, str) and value.shape is not None and d < len(value.shape):
                dim = value.shape[d]
                if isinstance(dim, ir.SymbolicDim) and dim.value and dim.value not in names:
                    names[dim.value] = want
    if not names:
        return

    def fix(v):
        if v.shape is None:
            return
        dims = [ir.SymbolicDim(names[d.value]) if isinstance(d, ir.SymbolicDim) and d.value in names else d
                for d in v.shape.dims]
        v.shape = ir.Shape(dims)

    for v in list(graph.inputs) + list(graph.outputs):
        fix(v)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for v in node.outputs:
            fix(v)


def _initializer_bytes(model) -> int:
    total = 0
    for v in model.graph.initializers.values():
        if v.const_value is not None:
            total += v.const_value.nbytes
    return total


def check_onnx_file(path: Path) -> None:
    """``onnx.checker`` (full check) and strict shape inference on the written file."""
    import onnx
    onnx.checker.check_model(str(path), full_check=True)
    inferred = path.with_name(path.name + ".inferred")
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred), check_type=True, strict_mode=True)
    finally:
        inferred.unlink(missing_ok=True)


def _update_report(qm, lowered: Program, target: str, path: Path) -> dict[str, str]:
    specs = {}
    for region in lowered.regions:
        for node in region.gm.graph.nodes:
            spec = get_spec(node)
            if spec is not None and node.op == "call_function" and spec.lowering != "reference":
                specs[spec.layer] = spec
    report = qm.report()
    for row in report.layers:
        spec = specs.get(row.layer)
        if spec is not None:
            row.lowering = spec.lowering
            row.notes[:] = [n for n in row.notes if not n.startswith(_NOTE)]
            row.notes.append(f"{_NOTE} {target}: {spec.lowering}")
            row.notes.extend(n for n in spec.notes if n not in row.notes)
    report.notes.append(f"exported to ONNX (target {target}, opset {OPSET}): {path}")
    return {layer: spec.lowering for layer, spec in specs.items()}


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
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"export path {str(path)!r} must end in .onnx")
    root = qm.program.root
    args, kwargs = as_call(example_inputs)
    call, tensors, out = _record_call(root, args, kwargs)
    call.record_output(out)
    if not call.output_names:
        raise UnsupportedError("the model returns no tensor, so there is nothing to export")
    axes = _axes_for(call, tensors, dynamic_shapes)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".qc-onnx-", dir=path.parent))
    try:
        with _lowered(qm.program, tgt.lowering) as lowered:
            _check_translations(lowered, table, tgt)
            program = _run_exporter(root, call, tensors, axes, table)
            lowering = _update_report(qm, lowered, tgt.name, path)
        _rename_dims(program.model, call, axes)
        big = _initializer_bytes(program.model) > EXTERNAL_DATA_BYTES
        use_external = big if external_data is None else bool(external_data)
        if big and not use_external:
            raise ConfigError("the model's weights pass 2 GB, which one ONNX file cannot hold",
                              hint="leave external_data=None (or True): weights go to <path>.data")
        staged = tmp / path.name
        program.save(str(staged), external_data=use_external)
        if check:
            check_onnx_file(staged)
        files = []
        for f in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".onnx"):  # data first, the .onnx last
            dest = path.parent / f.name
            os.replace(f, dest)
            files.append(dest)
    except QCompilerError:
        raise
    except Exception as e:  # noqa: BLE001 - checker and writer errors, with the place
        raise UnsupportedError(f"writing ONNX for target '{tgt.name}' failed: {type(e).__name__}: {_first_line(e)}",
                               hint="run with check=False to keep the file and inspect it") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return OnnxExport(path, tgt.name, call, lowering, use_external, OPSET, files)


def _run_exporter(root: nn.Module, call: CallSpec, tensors, axes, table):
    from torch.fx.experimental import _config as fx_config
    flat = FlatCall(root, call)
    flat.training = False  # not .eval(): exported graph modules refuse train()
    try:
        # size-1 example dims (a batch of one) must stay symbolic, as in capture
        with fx_config.patch(backed_size_oblivious=True), torch.no_grad(), _quiet():
            program = torch.onnx.export(
                flat, tuple(tensors), dynamo=True, opset_version=OPSET, dynamic_shapes=_export_dims(axes),
                custom_translation_table=table, optimize=False, output_names=call.output_names,
                verbose=False)
            _optimize(program.model)
    except Exception as e:  # noqa: BLE001 - the exporter raises anything; say where
        raise UnsupportedError(f"torch.onnx.export failed on the compiled model: {type(e).__name__}: {_first_line(e)}",
                               hint="the model must trace with torch.export (non-strict); see the chained "
                                    "exception for the exporter's report") from e
    return program


def _should_fold(node) -> bool | None:
    """Beyond onnxscript's size limits, fold on constants: every ``Transpose`` (weights, so the
    file stores ``W^T`` as MatMul wants it), the outlier masks (ConstantOfShape/ScatterElements
    of [K]) and the int8 -> uint8 shift of weights (Cast/Add to types of at most 2 bytes), none
    of which grows the file. Other ops by the default rules (so dequantized float weights never
    replace the stored codes)."""
    if node.domain != "":
        return None
    if node.op_type in ("Transpose", "ScatterElements"):
        return True
    if node.op_type == "ConstantOfShape" and node.inputs[0].const_value is not None:
        return int(np.prod(node.inputs[0].const_value.numpy())) <= 2**20
    if node.op_type in ("Cast", "Add") and all(v is not None and v.const_value is not None for v in node.inputs):
        from onnxscript import ir
        out = ir.DataType(node.attributes["to"].value) if node.op_type == "Cast" else node.inputs[0].dtype
        return out is not None and out.itemsize <= 2 and not out.is_floating_point()
    return None


def _optimize(model) -> None:
    """Constant folding (see :func:`_should_fold`) and dead-node removal. The exporter's own
    optimizer adds pattern rewrites that take most of the export time and change nothing here."""
    import onnx_ir.passes.common as common
    from onnxscript import ir
    from onnxscript.optimizer._constant_folding import FoldConstantsPass
    ir.passes.PassManager([FoldConstantsPass(shape_inference=False, input_size_limit=8192,
                                             output_size_limit=2**62, should_fold=_should_fold),
                           common.IdentityEliminationPass(), common.RemoveUnusedNodesPass(),
                           common.RemoveUnusedOpsetsPass()], steps=2, early_stop=True)(model)


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines to stdout and warns about torchvision ops it cannot
    register; keep a library call silent."""
    import io
    import logging
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deep-copies its own deprecated specs
            yield
    finally:
        log.setLevel(level)
