"""Fuzz: random small graphs, every registered scheme, ``backend="triton"`` (fp16: the kernels'
dtype), within each scheme's stated bound of the float64 reference. Without CUDA the kernels run
in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before anything
imports triton); with CUDA, on the GPU."""

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


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fuzz_triton(scheme):
    bound = BOUNDS[scheme]

    @fuzz_settings(2)
    @given(spec=graph_specs(max_ops=3, max_features=24), options=st.sampled_from(bound.options))
    @with_examples(("branchy", "all-outliers"), bound.options)
    def case(spec, options):
        check_case(spec, scheme, options, "triton", torch.float16)

    case()
