"""The fuzz bounds can fail: each is tight enough to tell a scheme from a cruder one, and none is
vacuous (the quantized graph's error is a visible fraction of its bound)."""

from __future__ import annotations

import pytest
import torch

import qcompiler
from fuzz_bounds import BOUNDS, int8_rule, uint_rule
from fuzz_graphs import COVERAGE, FuzzGraph, make_inputs
from fuzz_reference import calibration_stats, reference, unit_roundoff


def _worst_ratio(scheme: str, spec_name: str, rule) -> float:
    """max |out - ref| / bound over the calibration batches, for ``scheme`` held to ``rule``."""
    spec = COVERAGE[spec_name]
    model = FuzzGraph(spec).eval()
    calib = make_inputs(spec, 2)
    qm = qcompiler.compile(model, scheme, calib, progress=False)
    sites = calibration_stats(spec, model, calib, unit_roundoff(torch.float32))
    worst = 0.0
    for x in calib:
        y, e = reference(spec, sites, x, rule)
        with torch.no_grad():
            worst = max(worst, ((qm(x).double().reshape(y.shape) - y).abs() / e).max().item())
    return worst


def test_int4_weights_break_the_int8_bound():
    assert _worst_ratio("w4-weight-only", "ragged-groups", uint_rule(8, 0, True)) > 1.0


def test_ignoring_outliers_breaks_the_outlier_bound():
    # int8-vectorwise quantizes the x20 columns with the rest: outside LLM.int8()'s bound
    assert _worst_ratio("int8-vectorwise", "branchy", int8_rule("row", "channel", "static")) > 1.0


@pytest.mark.parametrize("scheme", ["int8-outlier", "int8-vectorwise", "w8-weight-only", "w4-weight-only", "nf4"])
def test_bounds_are_not_vacuous(scheme):
    # round to nearest uses a good part of its worst case somewhere in ~100 outputs
    assert _worst_ratio(scheme, "branchy", BOUNDS[scheme].rule({})) > 0.05
