"""Quantization-aware training: ``prepare_qat`` -> train as usual -> ``convert``.

    qat = qcompiler.prepare_qat(model, scheme="w4-weight-only", example_inputs=batch)
    opt = torch.optim.AdamW(qat.parameters(), lr=1e-4)
    for batch in data:                       # a normal training loop
        loss = loss_fn(qat(**batch), ...); loss.backward(); opt.step(); opt.zero_grad()
    qm = qcompiler.convert(qat, calibration_data=batches)   # a QuantizedModel, as compile returns

``prepare_qat`` captures the model exactly as ``compile`` does and runs the scheme's annotation
passes (``canonicalize-linear``, ``annotate-linears``, ``annotate-weight-format``,
``detect-outliers`` in dynamic mode) followed by ``insert-fake-quant``: every annotated linear now
computes with fake-quantized weights (and activations, for W8A8 schemes) through ops whose
gradient is the straight-through estimator. Parameters stay ``nn.Parameter``s.

``convert`` writes the trained parameters back into a copy of the original (float) model and
compiles that with the same scheme and options through :func:`qcompiler.compile`: the result has
the same ops, report and backends as post-training quantization. For round-to-nearest schemes
the stored weights are exactly what training saw; for ``gptq-*``/``awq-*`` training sees the
round-to-nearest grid and ``convert`` then runs GPTQ/AWQ on the trained weights.

The captured graphs are traced in eval mode, so dropout inside captured regions is off while
training (eager code between regions follows ``train()``/``eval()`` as usual).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from qcompiler.calibration import as_call
from qcompiler.capture import CaptureMethod, capture_regions
from qcompiler.errors import CaptureError, ConfigError
from qcompiler.pass_manager import PassContext, PassManager, Program, Region, print_pipeline
from qcompiler.passes.detect_outliers import DetectOutliers
from qcompiler.passes.insert_fake_quant import InsertFakeQuant
from qcompiler.schemes import get_scheme
from qcompiler.spec import OutlierMode

__all__ = ["QATModel", "prepare_qat", "convert", "QAT_ANNOTATION_PASSES"]

# Passes of a scheme's pipeline that only decide (annotate); QAT keeps the leading run of them.
QAT_ANNOTATION_PASSES = frozenset({"canonicalize-linear", "annotate-linears", "annotate-weight-format",
                                   "detect-outliers"})


class QATModel(nn.Module):
    """The model with fake quantization in its captured regions: train it, then ``convert`` it."""

    def __init__(self, model: nn.Module, program: Program, scheme: str, options: dict[str, Any],
                 example: tuple[tuple, dict], capture: str, float_model: nn.Module, pipeline: str):
        super().__init__()
        self.model = model
        self.scheme = scheme
        self.options = dict(options)
        self.pipeline = pipeline
        self._program = program
        self._example = example
        self._capture = capture
        object.__setattr__(self, "_float_model", float_model)  # not a submodule: no duplicate parameters

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True) -> "QATModel":
        """Train/eval mode for the eager parts; the captured graphs keep the mode they were traced
        in (eval) - torch.export's modules refuse ``train()``."""
        graphs = {id(r.gm) for r in self._program.regions}

        def visit(m: nn.Module) -> None:
            m.training = mode
            for child in m.children():
                if id(child) not in graphs:
                    visit(child)

        visit(self)
        return self

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    @property
    def program(self) -> Program:
        return self._program

    @property
    def graph_modules(self):
        return {r.label: r.gm for r in self._program.regions}


def _qat_pipeline(scheme: str, config) -> str:
    sch = get_scheme(scheme)
    try:
        passes = sch.passes(config, False)
    except ConfigError:  # schemes that need calibration data: their annotation prefix is the same
        passes = sch.passes(config, True)
    kept = []
    for p in passes:
        if p.name not in QAT_ANNOTATION_PASSES:
            break
        if isinstance(p, DetectOutliers) and p.mode is OutlierMode.STATIC:
            p = DetectOutliers(threshold=p.threshold, mode=OutlierMode.DYNAMIC)  # no calibration in QAT
        kept.append(p)
    if not any(p.name.startswith("annotate-") for p in kept):
        raise ConfigError(f"scheme '{scheme}' cannot be trained with QAT: its pipeline does not start by "
                          f"annotating linears ({print_pipeline(passes)[:80]}...)")
    return print_pipeline(kept + [InsertFakeQuant()])


def prepare_qat(model: nn.Module, scheme: str = "int8-vectorwise", *, example_inputs: Any,
                capture: str = "export", verify: bool = False, **options: Any) -> QATModel:
    """A trainable copy of ``model`` whose linears see the quantization error of ``scheme``.

    ``example_inputs`` (a tensor, tuple of args or dict of kwargs) is one forward used to capture
    the model; ``options`` are the scheme's (``group_size=64``, ...). ``model`` is not modified.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"prepare_qat takes a torch.nn.Module, got {type(model).__name__}")
    config = get_scheme(scheme).make_config(options)
    text = _qat_pipeline(scheme, config)
    manager = PassManager(text)
    manager.check()  # before the capture: QAT has no calibration data
    method = CaptureMethod.parse(capture)
    example = as_call(example_inputs)
    float_model = copy.deepcopy(model).eval()
    qmodel = copy.deepcopy(model).eval()
    plan = capture_regions(qmodel, *example, method=method)
    if not plan.regions:
        raise CaptureError("no part of the model holding a linear layer could be captured",
                           hint="; ".join(f"{p}: {why}" for p, why in plan.split[:3]) or None)
    if plan.regions[0][0] == "":
        qmodel = plan.regions[0][1]
    program = Program([Region(path, region) for path, region in plan.regions], qmodel)
    manager.run(program, PassContext(options={"qat": True}, scheme=scheme, verify=verify))
    return QATModel(qmodel, program, scheme, options, example, capture, float_model, str(manager))


def _trained_parameters(qat: QATModel) -> dict[str, nn.Parameter]:
    """The QAT model's parameters under the names they have in the original model."""
    out: dict[str, nn.Parameter] = {}
    region_prefixes = []
    for region in qat.program.regions:
        prefix = f"{region.path}." if region.path else ""
        region_prefixes.append(f"{region.path}.gm." if region.path else "gm.")
        for name, p in region.gm.named_parameters(remove_duplicate=False):
            orig = name[len("inner."):] if name.startswith("inner.") else name  # capture's wrapper
            out[prefix + orig] = p
    root = qat.model
    for name, p in root.named_parameters(remove_duplicate=False):
        if not any(name.startswith(pre) for pre in region_prefixes):
            out[name] = p
    return out


def convert(qat: QATModel, calibration_data: Any = None, *, scheme: str | None = None, backend: str = "eager",
            progress: bool = False, **options: Any):
    """Compile the trained ``qat`` model: ``qcompiler.compile`` on the float model with the trained
    weights, with the scheme (and options) ``qat`` was prepared with unless given here."""
    from qcompiler.api import compile as _compile

    if not isinstance(qat, QATModel):
        raise ConfigError(f"convert takes the model prepare_qat returned, got {type(qat).__name__}")
    model = copy.deepcopy(qat._float_model)
    trained = _trained_parameters(qat)
    missing = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in trained:
            p.data.copy_(trained[name].detach().to(p.device, p.dtype))
        else:
            missing.append(name)
    if missing:
        raise CaptureError(f"convert: the QAT model has no parameter for {', '.join(missing[:5])}"
                           + (" ..." if len(missing) > 5 else ""),
                           hint="the QAT model's structure was changed after prepare_qat")
    opts = {**qat.options, **options} if scheme is None else dict(options)
    example_inputs = None if calibration_data is not None else (qat._example[0] if not qat._example[1]
                                                                else qat._example[1])
    return _compile(model, scheme or qat.scheme, calibration_data, example_inputs=example_inputs,
                    backend=backend, capture=qat._capture, progress=progress, **opts)
