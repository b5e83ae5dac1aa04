"""``OrtModule``: an input the ONNX file cannot take (another rank) is a qcompiler error naming the
input and the shape the file takes, not ONNX Runtime's INVALID_ARGUMENT."""

from __future__ import annotations

import pytest
import torch

from qcompiler import UnsupportedError

from onnx_helpers import outlier_x, rel_err


def test_other_rank_is_a_clear_error(compile_mlp):
    qm = compile_mlp("int8-outlier", backend="onnxruntime")  # exported from [2, 8, 24] inputs
    x = outlier_x(2, 8, 24, seed=3)
    with torch.no_grad():
        assert rel_err(qm(x), qm.program.root(x)) <= 1e-5  # sizes that vary still run
        with pytest.raises(UnsupportedError, match=r"input 'x' has shape \[16, 24\].*takes \[\*, \*, 24\]"):
            qm(x.reshape(16, 24))
