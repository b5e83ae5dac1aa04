"""A torch module and one call of it -> a checked ONNX file, written atomically.

Shared by :func:`qcompiler.export_onnx` (compiled models, with a translation table for the
qcompiler ops) and :func:`export_float_onnx` (any torch model: the float baselines and the input of
peers such as ONNX Runtime's own quantizer). Steps: record the call (:class:`CallSpec`), pick the
dynamic axes, ``torch.onnx.export(dynamo=True)``, fold constants, name the dynamic dims, save to a
temporary folder (weights as external data past 2 GB), run ``onnx.checker`` and strict shape
inference, move into place. Nothing is left behind when a step fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from qcompiler.backends.onnxruntime.signature import CallSpec, FlatCall, call_signature
from qcompiler.backends.onnxruntime.translations import OPSET
from qcompiler.calibration import as_call
from qcompiler.errors import ConfigError, QCompilerError, UnsupportedError

__all__ = ["EXTERNAL_DATA_BYTES", "record_call", "write_onnx", "check_onnx_file", "export_float_onnx"]

EXTERNAL_DATA_BYTES = 2**31 - 2**26   # protobuf's 2 GiB limit, less headroom for the graph itself


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


def record_call(root: nn.Module, args: tuple, kwargs: dict) -> tuple[CallSpec, list[torch.Tensor], Any]:
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


def _rename_values(model, rename: dict[str, str]) -> None:
    for value in list(model.graph.inputs) + list(model.graph.outputs):
        if value.name in rename:
            value.name = rename[value.name]


def check_onnx_file(path: Path) -> None:
    """``onnx.checker`` (full check) and strict shape inference on the written file."""
    import onnx
    onnx.checker.check_model(str(path), full_check=True)
    inferred = path.with_name(path.name + ".inferred")
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred), check_type=True, strict_mode=True)
    finally:
        inferred.unlink(missing_ok=True)


def _initializer_bytes(model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def write_onnx(root: nn.Module, example_inputs: Any, path: str | os.PathLike, table: dict, *,
               dynamic_shapes: dict | None = None, external_data: bool | None = None, check: bool = True,
               inside: Callable[[tuple[tuple, dict]], contextlib.AbstractContextManager] | None = None,
               rename: dict[str, str] | None = None) -> tuple[CallSpec, Path, bool, list[Path]]:
    """Export ``root`` called with ``example_inputs`` to ``path``. ``inside((args, kwargs))``, given
    the example call as the export makes it, is entered around the export itself (compiled models
    swap their lowered graphs in there). ``rename`` gives graph inputs/outputs names that are no
    Python identifiers (``past_key_values.0.key``). Returns the call spec, the path, whether the
    weights went to external data, and the files written."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"export path {str(path)!r} must end in .onnx")
    args, kwargs = as_call(example_inputs)
    call, tensors, out = record_call(root, args, kwargs)
    call.record_output(out)
    if not call.output_names:
        raise UnsupportedError("the model returns no tensor, so there is nothing to export")
    axes = _axes_for(call, tensors, dynamic_shapes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".qc-onnx-", dir=path.parent))
    try:
        with (inside((args, {**kwargs, **call.fixed})) if inside else contextlib.nullcontext()):
            program = _run_exporter(root, call, tensors, axes, table)
        _rename_dims(program.model, call, axes)
        _rename_values(program.model, rename or {})
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
            os.replace(f, path.parent / f.name)
            files.append(path.parent / f.name)
    except QCompilerError:
        raise
    except Exception as e:  # noqa: BLE001 - checker and writer errors, with the place
        raise UnsupportedError(f"writing {path.name} failed: {type(e).__name__}: {_first_line(e)}",
                               hint="run with check=False to keep the file and inspect it") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return call, path, use_external, files


def export_float_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, dynamic_shapes: dict | None = None,
                      *, external_data: bool | None = None, check: bool = True) -> CallSpec:
    """Any (uncompiled) torch model as ONNX, the same way ``export_onnx`` writes compiled ones
    (same inputs, dynamic axes and outputs): the fp32/fp16 baseline, or the input of another
    quantizer (``onnxruntime.quantization.quantize_dynamic``). Returns the call spec."""
    call, _, _, _ = write_onnx(model, example_inputs, path, {}, dynamic_shapes=dynamic_shapes,
                               external_data=external_data, check=check)
    return call


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
    """Beyond onnxscript's size limits, fold on constants what never grows the file: every
    ``Transpose``/``Reshape``/``Pad`` (weights, so the file stores ``W^T`` and MatMulNBits' blocks
    as the kernels want them), the outlier masks (ConstantOfShape/ScatterElements of [K]), and
    ``Cast``/``Add`` to types of at most 2 bytes or no wider than their input (the int8 -> uint8
    shift, fp32 -> fp16 steps). Other ops by the default rules, so dequantized float weights
    never replace the stored codes."""
    if node.domain != "":
        return None
    if node.op_type in ("Transpose", "Reshape", "Pad", "ScatterElements"):
        return True
    if node.op_type == "ConstantOfShape" and node.inputs[0].const_value is not None:
        return int(np.prod(node.inputs[0].const_value.numpy())) <= 2**20
    if node.op_type in ("Cast", "Add") and all(v is not None and v.const_value is not None for v in node.inputs):
        from onnxscript import ir
        src = node.inputs[0].const_value.dtype
        out = ir.DataType(node.attributes["to"].value) if node.op_type == "Cast" else src
        return out.itemsize <= 2 and not out.is_floating_point() or out.itemsize <= src.itemsize
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
    _contiguous_initializers(model)


def _contiguous_initializers(model) -> None:
    """Folded ``Transpose``s leave weights as strided numpy views, which the writer copies element
    by element (numpy ``tofile``; ~10x slower than a contiguous write): store each contiguous."""
    from onnxscript import ir
    for value in model.graph.initializers.values():
        tensor = value.const_value
        raw = getattr(tensor, "raw", None)
        if isinstance(tensor, ir.Tensor) and isinstance(raw, np.ndarray) and not raw.flags["C_CONTIGUOUS"]:
            value.const_value = ir.Tensor(_contiguous(raw), dtype=tensor.dtype, name=tensor.name)


def _contiguous(a: np.ndarray) -> np.ndarray:
    try:  # torch copies a transposed view ~9x faster than numpy (blocked, threaded)
        return torch.from_numpy(a).contiguous().numpy()
    except TypeError:  # dtypes torch has no numpy bridge for (ml_dtypes' bfloat16, int4, ...)
        return np.ascontiguousarray(a)


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
