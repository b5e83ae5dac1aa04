"""The writer stores folded weights contiguous: a folded ``Transpose`` leaves a strided numpy view,
which onnx_ir writes element by element (most of a 1B model's export time before this)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

from qcompiler.backends.onnxruntime.writer import _contiguous_initializers
from onnx_helpers import MLP


def test_strided_initializers_become_contiguous_copies():
    from onnxscript import ir
    rng = np.random.default_rng(0)
    arrays = {"w16": rng.standard_normal((5, 7)).astype(np.float16).T,  # a transposed view
              "bf16": rng.standard_normal((3, 4)).astype(ml_dtypes.bfloat16).T,  # no torch numpy bridge
              "plain": rng.standard_normal((4, 3)).astype(np.float32)}
    graph = ir.Graph([], [], nodes=[], name="g")
    for name, a in arrays.items():
        value = ir.Value(name=name, const_value=ir.Tensor(a, name=name))
        graph.register_initializer(value)
    model = ir.Model(graph, ir_version=10)
    plain = graph.initializers["plain"].const_value
    _contiguous_initializers(model)
    for name, a in arrays.items():
        t = graph.initializers[name].const_value
        assert t.raw.flags["C_CONTIGUOUS"] and t.dtype == ir.Tensor(a).dtype, name
        assert np.array_equal(t.numpy().astype(np.float32), a.astype(np.float32)), name
    assert graph.initializers["plain"].const_value is plain  # already contiguous: left as it was


def test_exported_file_matches_after_the_copy(tmp_path):
    """End to end: the float export (weights folded to W^T, then copied) computes the module."""
    import onnxruntime as ort
    from qcompiler.backends.onnxruntime import export_float_onnx
    torch.manual_seed(0)
    mlp = MLP().eval()
    x = torch.randn(2, 3, 24)
    export_float_onnx(mlp, x, tmp_path / "mlp.onnx", external_data=True)
    got = ort.InferenceSession(str(tmp_path / "mlp.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), mlp(x), rtol=1e-5, atol=1e-5)
