"""Fuzz: random small graphs, every registered scheme, ``backend="onnxruntime"`` (CPU execution
provider, fp32), within each scheme's stated bound of the float64 reference. A scheme whose ops
have no ONNX translation must say so with :class:`qcompiler.UnsupportedError`."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import qcompiler
from fuzz_bounds import BOUNDS
from fuzz_case import check_case, fuzz_settings, with_examples
from fuzz_graphs import graph_specs

pytest.importorskip("onnxruntime", reason="backend 'onnxruntime' needs onnxruntime")

SCHEMES = qcompiler.list_schemes()
NO_ONNX: dict[str, str] = {}  # scheme -> the UnsupportedError it must raise; every scheme lowers today (nf4 too)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fuzz_onnxruntime(scheme):
    bound = BOUNDS[scheme]

    @fuzz_settings(1)
    @given(spec=graph_specs(max_ops=3, max_features=24), options=st.sampled_from(bound.options))
    @with_examples(("branchy", "all-outliers"), bound.options)
    def case(spec, options):
        if scheme in NO_ONNX:
            with pytest.raises(qcompiler.UnsupportedError, match=NO_ONNX[scheme]):
                check_case(spec, scheme, options, "onnxruntime", torch.float32)
            return
        check_case(spec, scheme, options, "onnxruntime", torch.float32)

    case()
