"""One fuzz case: compile a ``GraphSpec`` with a scheme on a backend and hold every output to the
scheme's bound against the float64 reference (``fuzz_bounds``, ``fuzz_reference``)."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, example, settings

import qcompiler
from fuzz_bounds import BOUNDS
from fuzz_graphs import COVERAGE, FuzzGraph, GraphSpec, make_inputs
from fuzz_reference import calibration_stats, reference, unit_roundoff

__all__ = ["check_case", "fuzz_settings", "with_examples"]


def fuzz_settings(max_examples: int):
    """Deterministic (same cases every run, no example database) and without per-example deadlines:
    each example compiles a model, which takes from 0.2 s (eager) to a few s (ONNX Runtime).
    ``QCOMPILER_FUZZ_SCALE=20`` multiplies the examples for a deeper local hunt (CI keeps 1)."""
    scale = int(os.environ.get("QCOMPILER_FUZZ_SCALE", "1"))
    return settings(max_examples=max_examples * scale, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


_LOWERED = {"triton": "triton:", "onnxruntime": "onnx:"}


def with_examples(names, options: tuple[dict, ...]):
    """``@example`` the named ``COVERAGE`` graphs, the i-th with the i-th option set (cycling)."""
    def wrap(fn):
        for i, name in enumerate(names):
            fn = example(spec=COVERAGE[name], options=options[i % len(options)])(fn)
        return fn
    return wrap


def _run(qm, x: torch.Tensor, n_out: int, where: str) -> torch.Tensor:
    """``qm(x)`` checked for shape, as float64 ``[tokens, n_out]``."""
    with torch.no_grad():
        got = qm(x)
    want = (*x.shape[:-1], n_out)
    assert tuple(got.shape) == want, f"{where}: output shape {tuple(got.shape)} != {want}"
    return got.detach().cpu().double().reshape(-1, n_out)


def _describe(spec: GraphSpec, scheme: str, options: dict, backend: str) -> str:
    return f"{scheme}{options or ''} on {backend}: {spec}"


def check_case(spec: GraphSpec, scheme: str, options: dict, backend: str, dtype: torch.dtype) -> None:
    bound = BOUNDS[scheme]
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"  # else the interpreter
    model = FuzzGraph(spec).to(device, dtype).eval()
    calib = [x.to(device) for x in make_inputs(spec, 2, dtype)]
    fresh = make_inputs(spec, 1, dtype, rows=spec.eval_rows)[0].to(device)  # not seen by calibration
    kw = dict(calibration_data=calib) if bound.calibrated else dict(example_inputs=calib[0])
    qm = qcompiler.compile(model, scheme, backend=backend, progress=False, **kw, **options)
    where = _describe(spec, scheme, options, backend)
    prefix = _LOWERED.get(backend)
    if prefix:  # the backend really ran the layers (no silent fallback to the reference ops)
        lowered = [r.lowering for r in qm.report().quantized]
        assert lowered and all(lw.startswith(prefix) for lw in lowered), f"{where}: lowered as {lowered}"
    sites = calibration_stats(spec, model, calib, unit_roundoff(dtype))
    rule = bound.rule(options)
    if bound.check == "elementwise":
        for i, x in enumerate(calib + [fresh]):
            y, e = reference(spec, sites, x, rule)
            got = _run(qm, x, y.shape[-1], where)
            err = (got - y).abs()
            ratio = (err / e.clamp_min(1e-300)).max().item()
            assert bool(torch.isfinite(got).all()) and bool((err <= e).all()), (
                f"{where}, batch {i}: |out - ref| exceeds the bound by {ratio:.3g}x "
                f"(max err {err.max().item():.3g}, its bound {e.flatten()[err.argmax()].item():.3g})")
    else:  # frobenius, over the calibration batches only (see fuzz_bounds)
        num = den = 0.0
        for x in calib:
            y, e = reference(spec, sites, x, rule)
            got = _run(qm, x, y.shape[-1], where)
            assert bool(torch.isfinite(got).all()), f"{where}: non-finite output"
            num += (got - y).square().sum().item()
            den += e.square().sum().item()
        assert num <= den, f"{where}: ||out - ref||_F = {num ** 0.5:.3g} > round-to-nearest bound {den ** 0.5:.3g}"
