"""``qm.half()`` / ``qm.to(dtype)`` on a ``backend="onnxruntime"`` model: the ONNX file's dtype is
fixed at export, so a cast to another dtype is a clear qcompiler error raised before anything
changes; a cast to the dtype the file already has, and device moves, change nothing."""

from __future__ import annotations

import pytest
import torch

from qcompiler import UnsupportedError

from onnx_helpers import outlier_x, rel_err


def test_cast_to_another_dtype_raises_and_leaves_the_model(compile_mlp):
    qm = compile_mlp("int8-outlier", backend="onnxruntime")  # float32 export
    x = outlier_x(2, 8, 24, seed=5)
    with torch.no_grad():
        before = qm(x)
    for cast in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.to(dtype=torch.float16)):
        with pytest.raises(UnsupportedError, match=r"from float32 to (float16|bfloat16).*model\.onnx was exported in float32"):
            cast(qm)
    with torch.no_grad():
        assert torch.equal(qm(x), before)  # still the float32 session, same outputs
    assert qm.float() is qm and qm.to(torch.float32) is qm and qm.to("cpu") is qm  # nothing to change
    with torch.no_grad():
        assert rel_err(qm(x), qm.program.root(x)) <= 1e-5  # same int8 codes: float rounding only
