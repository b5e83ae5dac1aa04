"""Per-layer ONNX Runtime forms for int8 linears (``layer_forms.py``): a plan by weight shape,
each form in parity with its eager lowering and never less accurate than the scheme."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import qcompiler
from qcompiler.backends.onnxruntime import ExportTarget, lowered_view, register_target
from qcompiler.backends.onnxruntime.layer_forms import LayerForm, choose_plan, format_plan, parse_plan
from qcompiler.backends.onnxruntime.translations import ort_table
from qcompiler.errors import ConfigError

from onnx_helpers import onnx_ops, outlier_x, rel_err, run_ort


def test_plan_text_round_trip():
    plan = parse_plan("72x24:dequant; 24x72:nbits")
    assert plan == {(72, 24): LayerForm.DEQUANT, (24, 72): LayerForm.NBITS}
    assert parse_plan(format_plan(plan)) == plan
    assert choose_plan({(72, 24): {"nbits": 0.2, "dequant": 0.1}, (24, 72): {"nbits": 0.1, "int8": 0.5}}) == \
        {(72, 24): LayerForm.DEQUANT, (24, 72): LayerForm.NBITS}
    with pytest.raises(ConfigError, match="cannot read plan item"):
        parse_plan("72x24:fp8")


@pytest.mark.parametrize("plan,ops", [
    ("72x24:dequant;24x72:dequant", {"ScatterND", "MatMul"}),        # outlier columns written in exactly
    ("72x24:int8;24x72:nbits", {"MatMulInteger", "MatMulNBits"}),     # one layer each way
])
def test_forms_parity_and_accuracy(compile_mlp, mlp, tmp_path, plan, ops):
    qm = compile_mlp()
    name = f"test-plan-{len(ops)}-{plan.count('dequant')}"
    register_target(ExportTarget(name, f"lower-ort-matmul-nbits{{plan={plan}}},dce,label-onnx-lowering{{matmul_nbits=true}}",
                                 ort_table, ("CPUExecutionProvider",)))
    example = outlier_x(2, 8, 24)
    out = qcompiler.export_onnx(qm, example, tmp_path / "forms.onnx", target=name)
    assert ops <= {n for _, n in onnx_ops(out.path)}
    if "int8" not in plan:  # the file keeps int8 codes: no float tensor of one value per weight
        inits = [numpy_helper.to_array(t) for t in onnx.load(str(out.path)).graph.initializer]
        assert max(a.size for a in inits if np.issubdtype(a.dtype, np.floating)) < 24 * 72
        assert all(v.startswith("onnx:int8 dequantized at load") for v in out.lowering.values())
    for i, shape in enumerate([(3, 5, 24), (1, 1, 24)]):
        x = outlier_x(*shape, seed=40 + i)
        with torch.no_grad(), lowered_view(qm, name, example):
            want = qm(x)
        got = run_ort(out, x)
        assert rel_err(got, want) <= 1e-5
        with torch.no_grad():
            assert rel_err(got, mlp(x)) <= rel_err(qm(x), mlp(x))
