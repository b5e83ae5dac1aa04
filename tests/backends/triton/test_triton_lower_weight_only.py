"""``lower-triton`` on the weight-only schemes: the reference ops become the M-dispatched Triton ops
(NF4's double-quant dequantize fused in), the report names the kernel, outputs match eager, and
layers the kernels cannot take keep the reference op (with a note) or raise.

The CPU tests run the kernels in Triton's interpreter on a tiny MLP; ``test_gpu_*`` compile a
larger fp16 model on a CUDA GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from triton_problems import DEVICE

import qcompiler
import qcompiler.backends.triton  # noqa: F401 - registers torch.ops.qcompiler_triton

OPS = torch.ops.qcompiler_triton
REF = torch.ops.qcompiler
_WEIGHT_ONLY = {OPS.weight_only_uint_linear.default, OPS.weight_only_nf4_linear.default}
_REFERENCE = {REF.weight_only_linear.default, REF.nf4_linear.default, REF.dequantize_blockwise_int8.default}


def _mlp(dims, dtype, device):
    torch.manual_seed(0)
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(device, dtype).eval()


def _targets(qm):
    return [n.target for gm in qm.graph_modules.values() for n in gm.graph.nodes if n.op == "call_function"]


def _rel(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def _compile_pair(model, scheme, x, options):
    eager = qcompiler.compile(model, scheme, example_inputs=x, progress=False, **options)
    tri = qcompiler.compile(model, scheme, example_inputs=x, backend="triton", progress=False,
                            verify=True, **options)
    return eager, tri


@pytest.mark.parametrize("scheme,options,op", [
    ("w4-weight-only", dict(symmetric=False, group_size=32), "weight_only_uint_linear (w4 g32"),
    ("nf4", dict(double_quant=True), "weight_only_nf4_linear (b64 +dq fused"),
], ids=["w4-asym-g32", "nf4-dq"])
def test_lowered_graph_and_outputs(scheme, options, op):
    dtype = torch.float16
    model = _mlp((64, 96, 40), dtype, DEVICE)
    x = torch.randn(3, 64).to(DEVICE, dtype)
    eager, tri = _compile_pair(model, scheme, x, options)
    targets = _targets(tri)
    assert sum(t in _WEIGHT_ONLY for t in targets) == 2
    assert not any(t in _REFERENCE for t in targets)
    assert [r.lowering.split(":", 1)[1].startswith(op) for r in tri.report().quantized] == [True, True]
    for rows in (1, 3, 20, 300):  # GEMV (CUDA cores), GEMV (tl.dot), M-tiled kernel, dequantize + matmul
        xx = torch.randn(rows, 64).to(DEVICE, dtype)
        # Same codes and scales; the kernels round W to fp16 on the dot path and sum in another
        # order: differences of the order of fp16's eps (1e-3) relative to |y|.
        assert _rel(tri(xx), eager(xx)) < 2e-3, rows


def test_float32_weight_only_falls_back_or_raises():
    model = _mlp((32, 16, 8), torch.float32, DEVICE)
    x = torch.randn(4, 32, device=DEVICE)
    with pytest.raises(qcompiler.PassError, match="float16/bfloat16"):
        qcompiler.compile(model, "nf4", example_inputs=x, backend="triton", progress=False)
    qm = qcompiler.compile(model, "w4-weight-only", example_inputs=x, backend="triton", progress=False,
                           allow_fallback=True)
    assert REF.weight_only_linear.default in _targets(qm)
    for row in qm.report().quantized:
        assert row.lowering == "reference"
        assert any("fell back" in n and "float16/bfloat16" in n for n in row.notes), row.notes


_GPU = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA GPU (compiles the kernels for it; the CPU tests above "
                                 "cover the lowering in the interpreter)")


@_GPU
@pytest.mark.parametrize("scheme,options", [
    ("w4-weight-only", {}), ("w4-weight-only", dict(symmetric=False)), ("w8-weight-only", {}),
    ("nf4", {}), ("nf4", dict(double_quant=True)),
], ids=["w4", "w4-asym", "w8", "nf4", "nf4-dq"])
def test_gpu_fp16_model_matches_eager(scheme, options):
    model = _mlp((512, 1376, 512), torch.float16, "cuda")
    x = torch.randn(5, 512, device="cuda", dtype=torch.float16)
    eager, tri = _compile_pair(model, scheme, x, options)
    assert sum(t in _WEIGHT_ONLY for t in _targets(tri)) == 2
    for rows in (1, 7, 16, 17, 300):  # both GEMV forms, the M = 16 edge, dequantize + cuBLAS
        xx = torch.randn(rows, 512, device="cuda", dtype=torch.float16)
        y, ref = tri(xx), eager(xx)
        assert torch.isfinite(y).all()
        assert _rel(y, ref) < 2e-3, rows  # same quantized W, fp16 rounding only
        for _ in range(3):  # split-K reduction in a fixed order: the same bits every call
            assert torch.equal(tri(xx), y)
