"""Shared pieces of the ONNX export / ONNX Runtime tests (CPU execution provider only).

Exports are the slow part (torch.export + translation: a few seconds each on two cores), so the
compiled models are built once per session and each test exports only what it checks.
"""

from __future__ import annotations

import pytest
import torch

import qcompiler

from onnx_helpers import MLP, outlier_x

@pytest.fixture(scope="session")
def mlp():
    torch.manual_seed(0)
    return MLP().eval()


@pytest.fixture(scope="session")
def mlp_calibration():
    return [outlier_x(2, 8, 24, seed=s) for s in range(4)]


@pytest.fixture(scope="session")
def compile_mlp(mlp, mlp_calibration):
    """``compile_mlp(scheme="int8-outlier", **options)`` -> the MLP compiled, cached per options."""
    cache = {}

    def build(scheme: str = "int8-outlier", **options):
        key = (scheme, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = qcompiler.compile(mlp, scheme, mlp_calibration, progress=False, **options)
        return cache[key]

    return build
