"""Fuzz: random small graphs, every registered scheme, eager backend (fp32), within each scheme's
stated bound of the float64 reference (``fuzz_bounds.BOUNDS``)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import qcompiler
from fuzz_bounds import BOUNDS
from fuzz_case import check_case, fuzz_settings, with_examples
from fuzz_graphs import graph_specs

SCHEMES = qcompiler.list_schemes()
# Calibrated searches are slower per compile (AWQ: a grid of candidate scales per layer).
_EXAMPLES = {"awq-w4": 3, "gptq-w4": 5, "gptq-w8": 5}


def test_every_scheme_has_a_bound():
    assert set(SCHEMES) == set(BOUNDS), "add the new scheme's bound to tests/fuzz/fuzz_bounds.py"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fuzz_eager(scheme):
    bound = BOUNDS[scheme]

    @fuzz_settings(_EXAMPLES.get(scheme, 8))
    @given(spec=graph_specs(), options=st.sampled_from(bound.options))
    @with_examples(("branchy", "all-outliers", "ragged-groups"), bound.options)
    def case(spec, options):
        check_case(spec, scheme, options, "eager", torch.float32)

    case()
