"""``qcompiler.compile``: capture, run the scheme's pipeline, lower, report."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from qcompiler.backends import get_backend
from qcompiler.calibration import CalibrationSet, as_call
from qcompiler.capture import CaptureMethod, capture_regions
from qcompiler.contracts import CALIBRATION_DATA
from qcompiler.errors import CalibrationError, CaptureError, ConfigError, UnsupportedError
from qcompiler.inference_only import eval_mode, training_error
from qcompiler.meta_device import check_not_meta
from qcompiler.model_bytes import larger_than_float_note, state_bytes, tied_layer_notes
from qcompiler.pass_manager import PassContext, PassManager, Program, Region, parse_pipeline
from qcompiler.passes.annotate_linears import SUPPORTED_DTYPES
from qcompiler.memory_usage import records_peak_memory
from qcompiler.report import Report, build_report
from qcompiler.schemes import get_scheme
from qcompiler.serialize.record import CompileRecord, weights_digest
from qcompiler.graph.snapshot import snapshot_graph

__all__ = ["compile", "QuantizedModel"]


class QuantizedModel(nn.Module):
    """The compiled model: call it like the original. Attributes it does not have (``generate``,
    ``config``, ...) come from the wrapped model, so Hugging Face models keep working."""

    def __init__(self, model: nn.Module, program: Program, report: Report, record: CompileRecord | None = None):
        super().__init__()
        self.model = model
        self._program = program
        self._report = report
        self.record = record  # how it was compiled: what qcompiler.save writes besides the tensors
        self.training = False  # inference only, like the model inside (see train)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True) -> "QuantizedModel":
        """``eval()`` / ``train(False)`` work (compile already returns the model in eval mode);
        ``train()`` raises :class:`UnsupportedError`: a compiled model runs inference only (for
        quantization-aware training use :func:`qcompiler.prepare_qat`)."""
        if mode:
            raise training_error("a compiled model")  # before any flag flips: all or nothing
        return super().train(False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def report(self) -> Report:
        return self._report

    @property
    def program(self) -> Program:
        return self._program

    @property
    def graph_modules(self) -> dict[str, torch.fx.GraphModule]:
        return {r.label: r.gm for r in self._program.regions}


def _first_output(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    leaves = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return leaves[0] if leaves else None


def _run_reference(model: nn.Module, calls: list[tuple[tuple, dict]]) -> list[torch.Tensor | None]:
    outs = []
    with torch.no_grad():
        for i, (args, kwargs) in enumerate(calls):
            try:
                outs.append(_first_output(model(*args, **kwargs)))
            except Exception as e:  # noqa: BLE001 - the user's data does not fit the model
                raise CalibrationError(f"input {i} does not fit the model: {type(e).__name__}: {e}",
                                       hint="each item must be something the model accepts: a tensor, a "
                                            "tuple of positional args or a dict of keyword args") from e
    return outs


def _check_dtypes(model: nn.Module) -> None:
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and p.dtype not in SUPPORTED_DTYPES:
            raise UnsupportedError(f"parameter '{name}' has dtype {p.dtype}",
                                   hint="qcompiler handles float32, float16 and bfloat16 models: "
                                        "cast the model, e.g. model.float()")


@records_peak_memory  # report().memory: this call's peak device/host memory
def compile(model: nn.Module, scheme: str = "int8-outlier", calibration_data: Iterable[Any] | None = None, *,
            example_inputs: Any = None, backend: str = "eager", capture: str = "export",
            whole_graph: bool = False, pipeline: str | None = None, verify: bool = False,
            progress: bool = True, max_calibration_batches: int | None = None,
            allow_fallback: bool = False, inplace: bool = False, fuse_siblings: bool = True,
            **options: Any) -> QuantizedModel:
    """Quantize ``model`` with ``scheme`` and return a module with the same call signature.

    >>> qm = qcompiler.compile(model, scheme="int8-outlier", calibration_data=batches, threshold=6.0)
    >>> y = qm(*same_args_as_model)
    >>> print(qm.report())

    ``calibration_data`` items may be a tensor, a tuple of positional args or a dict of keyword
    args. Scheme options (``threshold``, ``outlier_mode``, ...) go in ``options``. ``pipeline``
    replaces the scheme's pass pipeline with a text pipeline of your own. ``allow_fallback=True``
    lets layers the backend cannot run keep the reference ops (each one noted in the report)
    instead of failing. ``fuse_siblings=False`` keeps q/k/v and gate/up as separate kernel calls
    with ``backend="triton"`` (docs/sibling-fusion.md).

    By default the model passed in is never modified: compile works on a copy, so its peak memory
    is about twice the float model plus the quantized one. ``inplace=True`` quantizes the model
    itself, block by block, releasing each block's float weights once it is done (peak: the float
    model plus one block); the model passed in then *is* the compiled one's inside. To quantize a
    checkpoint that does not fit in memory, use :func:`qcompiler.from_pretrained`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compile takes a torch.nn.Module, got {type(model).__name__}")
    sch = get_scheme(scheme)
    config = sch.make_config(options)
    be = get_backend(backend)
    method = CaptureMethod.parse(capture)
    calib = CalibrationSet.from_user(calibration_data, max_items=max_calibration_batches)
    if example_inputs is None and calib is None:
        raise ConfigError("compile needs example_inputs or calibration_data to capture the model")
    example = as_call(example_inputs) if example_inputs is not None else calib.calls[0]
    passes = parse_pipeline(pipeline) if pipeline is not None else sch.passes(config, calib is not None)
    lowering = parse_pipeline(be.lowering) if be.lowering else []
    if allow_fallback:  # every lowering pass that can fall back is told it may
        lowering = [dataclasses.replace(p, fallback=True) if "fallback" in {f.name for f in dataclasses.fields(p)}
                    else p for p in lowering]
    manager = PassManager(passes + lowering)  # parse errors surface before any work
    manager.check({CALIBRATION_DATA} if calib is not None else ())  # so do impossible pipelines
    unusable = None
    try:
        be.check()
    except UnsupportedError as e:
        if not allow_fallback:
            raise
        unusable = f"{e.message}: allow_fallback=True kept the reference op of each layer its kernels cannot run"
    _check_dtypes(model)
    check_not_meta(model, example)

    ref_calls = (calib.calls[:2] if calib is not None else [example])
    with eval_mode(model) as was_training:  # the compiled model runs in eval mode: compare like with like
        ref_outs = _run_reference(model, ref_calls)
    if inplace:  # the memory-lean path lives in qcompiler.loading.inplace
        from qcompiler.loading.inplace import compile_inplace, plan_for
        qm = compile_inplace(model, plan_for(scheme, options, backend, capture, calib, progress, verify, allow_fallback,
                                             pipeline, whole_graph), calib.calls if calib is not None else [example])
        _compare_outputs(qm, ref_calls, ref_outs, qm.report())
        return qm
    base = weights_digest(model)
    qmodel = copy.deepcopy(model).eval()
    plan = capture_regions(qmodel, *example, method=method, whole=whole_graph, progress=progress)
    if not plan.regions:
        raise CaptureError("no part of the model holding a linear layer could be captured",
                           hint="; ".join(f"{p}: {why}" for p, why in plan.split[:3]) or None)
    if plan.regions[0][0] == "":
        qmodel = plan.regions[0][1]
    program = Program([Region(path, region) for path, region in plan.regions], qmodel)
    ctx = PassContext(scheme=scheme, backend=backend, progress=progress,
                      calibration_data=calib, verify=verify)
    before = {r.label: snapshot_graph(r.gm, r.label) for r in program.regions}
    manager.run(program, ctx)
    for region in program.regions:  # no pass runs after this: drop export's per-call plumbing
        region.module.freeze()

    report = build_report(program, ctx, scheme=scheme, backend=backend, pipeline=str(manager),
                          split=plan.split, model_bytes_before=state_bytes(model))
    tied = tied_layer_notes(model, [r.layer for r in report.quantized], program.root)
    for row in report.quantized:
        row.notes.extend([tied[row.layer]] if row.layer in tied else [])
        bigger = larger_than_float_note(row.bytes_before, row.bytes_after, len(row.outlier_dims or ()), row.shape[1])
        row.notes.extend([bigger] if bigger else [])
    report.notes.extend([unusable] if unusable else [])
    if was_training:
        report.notes.append("the model was passed in train mode: compiled and compared with the float model in "
                            "eval mode (dropout off); the model passed in keeps its mode")
    report.notes.extend(f"not called in the example forward, left in float: {p}" for p in plan.not_called)
    record = CompileRecord(scheme, dict(options), backend, method.value, whole_graph, str(manager), example[0],
                           example[1], base, before, dict(ctx.state.absmax))
    qm = QuantizedModel(qmodel, program, report, record)
    qm.fuse_siblings = fuse_siblings  # read by the triton backend's finalize
    if be.finalize is not None:
        qm = be.finalize(qm, example)
    _compare_outputs(qm, ref_calls, ref_outs, report)
    return qm


def _compare_outputs(qm: QuantizedModel, calls, ref_outs, report: Report) -> None:
    num = den = dot = nq = 0.0
    with torch.no_grad():
        for (args, kwargs), ref in zip(calls, ref_outs):
            out = _first_output(qm(*args, **kwargs))
            if ref is None or out is None or out.shape != ref.shape:
                return
            r, o = ref.double().flatten(), out.double().flatten()
            num += (o - r).square().sum().item()
            den += r.square().sum().item()
            dot += (o * r).sum().item()
            nq += o.square().sum().item()
    if den:
        report.output_rel_error = (num / den) ** 0.5
        report.output_cosine = dot / ((den * nq) ** 0.5) if nq else 0.0
