"""export_onnx on an MLP whose input has outlier columns: parity with the compiled eager module
in ONNX Runtime (CPU EP) at two shapes per export, on every target, plus the edge cases."""

from __future__ import annotations

import onnx
import pytest
import torch

import qcompiler
from qcompiler.backends.onnxruntime import lowered_view

from onnx_helpers import outlier_x, onnx_ops, rel_err, run_ort

# Two calls per export with other batch and sequence sizes: the axes are really dynamic.
SHAPES = [(2, 8, 24), (3, 5, 24), (1, 1, 24)]

# ORT reproduces the int8 codes bit for bit (same float32 ops in the same order), so what is
# left is float32 rounding in the dequantization: relative error ~1e-7, bounded here at 1e-5.
PARITY = 1e-5


def _check_parity(qm, exported):
    # export_onnx already ran the checker and strict shape inference; every file is checked
    # again here, independently of it
    onnx.checker.check_model(str(exported.path), full_check=True)
    for i, shape in enumerate(SHAPES):
        x = outlier_x(*shape, seed=100 + i)
        with torch.no_grad():
            want = qm(x)
        got = run_ort(exported, x)
        assert got.shape == want.shape
        assert rel_err(got, want) <= PARITY, (shape, rel_err(got, want))


@pytest.mark.parametrize("target", ["generic", "ort-cpu"])
def test_static_outliers_parity(compile_mlp, tmp_path, target):
    qm = compile_mlp()
    out = qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.onnx", target=target)
    _check_parity(qm, out)
    ops = onnx_ops(out.path)
    assert ("ai.onnx", "MatMulInteger") in ops and ("ai.onnx", "Gather") in ops  # int8 part + outliers
    assert all(domain == "ai.onnx" for domain, _ in ops)  # standard operators only
    model = onnx.load(str(out.path))
    assert model.opset_import[0].version >= 17
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [["batch", "sequence", 24]]
    # the report says which operators each layer became
    rows = {r.layer: r for r in qm.report().layers}
    assert rows["up"].lowering.startswith("onnx:MatMulInteger") and "Gather/MatMul (3 cols)" in rows["up"].lowering
    assert any(n.startswith(f"ONNX lowering, {target}") for n in rows["up"].notes)
    assert out.lowering["up"] == rows["up"].lowering


def test_ort_cuda_target_matmul_nbits(compile_mlp, mlp, tmp_path):
    """ort-cuda: every int8 layer becomes MatMulNBits (8-bit, weight-only, the scheme's int8
    weights) + the exact fp product of the static outlier columns. It runs on the CPU EP too."""
    qm = compile_mlp()
    out = qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.onnx", target="ort-cuda")
    ops = onnx_ops(out.path)
    assert ("com.microsoft", "MatMulNBits") in ops and ("ai.onnx", "MatMulInteger") not in ops
    assert out.lowering["up"] == "ort:MatMulNBits(8-bit, block 16) + fp outliers: Gather/MatMul (3 cols)"
    with lowered_view(qm, "ort-cuda", outlier_x(2, 8, 24)):  # eager reference of what the file computes
        _check_parity(qm, out)
    # Accuracy: X is not quantized and the weights are the scheme's, so the error against the
    # float model is never above the scheme's own.
    for i, shape in enumerate(SHAPES):
        x = outlier_x(*shape, seed=200 + i)
        with torch.no_grad():
            ref, scheme = mlp(x), qm(x)
        assert rel_err(run_ort(out, x), ref) <= rel_err(scheme, ref)


def test_ort_cuda_folds_mild_outliers(mlp, tmp_path):
    """Outlier columns only x3 (a few values past the threshold): on the example, folding them
    into the 8-bit weight adds less error than the scheme's rounding of X, so ort-cuda folds
    them (one op per layer) and stays more accurate than the scheme."""
    calibration = [outlier_x(2, 8, 24, seed=s, scale=3.0) for s in range(4)]
    qm = qcompiler.compile(mlp, "int8-outlier", calibration, progress=False)
    assert len(qm.report().layers[0].outlier_dims) == 3
    example = outlier_x(2, 8, 24, scale=3.0)
    out = qcompiler.export_onnx(qm, example, tmp_path / "mlp.onnx", target="ort-cuda")
    assert out.lowering["up"] == "ort:MatMulNBits(8-bit, block 16) (3 outlier dims folded in)"
    assert ("ai.onnx", "Gather") not in onnx_ops(out.path)
    note = next(n for n in qm.report().layers[0].notes if "folded into the 8-bit weight" in n)
    assert "on the example, folding adds" in note
    x = outlier_x(4, 8, 24, seed=77, scale=3.0)
    with torch.no_grad(), lowered_view(qm, "ort-cuda", example):
        assert rel_err(run_ort(out, x), qm(x)) <= PARITY
    with torch.no_grad():
        assert rel_err(run_ort(out, x), mlp(x)) <= rel_err(qm(x), mlp(x))


def test_no_outlier_columns(compile_mlp, tmp_path):
    qm = compile_mlp(threshold=1e9)  # nothing is an outlier: plain vector-wise int8
    assert all(r.outlier_dims == [] for r in qm.report().quantized)
    for target in ("generic", "ort-cuda"):
        out = qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / f"{target}.onnx", target=target)
        assert "outliers" not in out.lowering["up"]
        with lowered_view(qm, target, outlier_x(2, 8, 24)):
            _check_parity(qm, out)


def test_every_column_an_outlier(compile_mlp, tmp_path):
    qm = compile_mlp(threshold=0.0)  # every column is an outlier: the whole product stays in float
    assert qm.report().layers[0].outlier_dims == list(range(24))
    for target in ("generic", "ort-cpu", "ort-cuda"):
        out = qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / f"{target}.onnx", target=target)
        with lowered_view(qm, target, outlier_x(2, 8, 24)):
            _check_parity(qm, out)


def test_dynamic_outliers(compile_mlp, tmp_path):
    """Outlier columns found on every call (NonZero/Gather in the graph)."""
    qm = compile_mlp(outlier_mode="dynamic")
    out = qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.onnx", target="ort-cpu")
    assert ("ai.onnx", "NonZero") in onnx_ops(out.path)
    _check_parity(qm, out)


@pytest.mark.parametrize("scheme,options,target,op", [
    ("int8-absmax", {}, "ort-cpu", "MatMulInteger"),                             # one scale for all of X
    ("w8-weight-only", {"group_size": 16}, "ort-cuda", "MatMulNBits"),            # K=72: last block padded
    ("w4-weight-only", {"group_size": 16, "symmetric": False}, "ort-cuda", "MatMulNBits"),  # packed + zero points
    ("w8-weight-only", {}, "ort-cuda", "MatMul"),  # per channel: K=24 is no MatMulNBits block size
    ("w4-weight-only", {"group_size": 16}, "ort-cpu", "MatMul"),                  # dequantize + MatMul on CPU
])
def test_other_schemes(compile_mlp, tmp_path, scheme, options, target, op):
    """Per-tensor int8 and the weight-only formats (MatMulNBits where its layout allows)."""
    qm = compile_mlp(scheme, **options)
    out = qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.onnx", target=target)
    _check_parity(qm, out)
    ops = {name for _, name in onnx_ops(out.path)}
    assert op in ops and (op == "MatMulNBits") == ("MatMulNBits" in ops)


def test_external_data(compile_mlp, tmp_path):
    """external_data=True writes the weights beside the graph (what models over 2 GB get)."""
    qm = compile_mlp()
    out = qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.onnx", external_data=True)
    assert out.external_data and sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]
    _check_parity(qm, out)
