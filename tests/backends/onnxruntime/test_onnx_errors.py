"""Bad input to export_onnx: a clear qcompiler error, and no file (partial or not) left behind."""

from __future__ import annotations

import pytest
import torch

import qcompiler
from qcompiler.backends.onnxruntime import writer
from qcompiler.errors import ConfigError, UnsupportedError

from onnx_helpers import outlier_x, run_ort


def _nothing_written(folder):
    assert list(folder.iterdir()) == [], list(folder.iterdir())


def test_not_compiled(mlp, tmp_path):
    with pytest.raises(ConfigError, match="takes the model qcompiler.compile returned.*\n  hint: compile it first"):
        qcompiler.export_onnx(mlp, outlier_x(2, 8, 24), tmp_path / "mlp.onnx")
    _nothing_written(tmp_path)


def test_scheme_without_onnx_lowering(compile_mlp, tmp_path):
    # a target whose table lacks an op the model uses: the error names the layer and the op
    import torch

    from qcompiler.backends.onnxruntime import ExportTarget, register_target
    from qcompiler.backends.onnxruntime.translations import standard_table
    nf4 = torch.ops.qcompiler.nf4_linear.default
    register_target(ExportTarget("test-no-nf4", "label-onnx-lowering",
                                 lambda: {k: v for k, v in standard_table().items() if k is not nf4},
                                 ("CPUExecutionProvider",)))
    qm = compile_mlp("nf4")
    with pytest.raises(UnsupportedError, match="layer 'up' uses qcompiler::nf4_linear, which has no ONNX lowering"):
        qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.onnx", target="test-no-nf4")
    _nothing_written(tmp_path)


@pytest.mark.parametrize("example,match", [
    (outlier_x(2, 8, 23), "example_inputs do not fit the compiled model"),   # feature dim 23, not 24
    ({"y": outlier_x(2, 8, 24)}, "do not fit the compiled model.*argument: 'x'"),  # no argument y, no x
])
def test_example_of_the_wrong_shape(compile_mlp, tmp_path, example, match):
    with pytest.raises(ConfigError, match=match):
        qcompiler.export_onnx(compile_mlp(), example, tmp_path / "mlp.onnx")
    _nothing_written(tmp_path)


def test_bad_options(compile_mlp, tmp_path):
    qm = compile_mlp()
    with pytest.raises(ConfigError, match="unknown ONNX export target 'tensorrt'"):
        qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.onnx", target="tensorrt")
    with pytest.raises(ConfigError, match="dynamic_shapes names no input 'input_ids'\n  hint: the inputs are: x"):
        qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.onnx", dynamic_shapes={"input_ids": {0: "b"}})
    with pytest.raises(ConfigError, match="must end in .onnx"):
        qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.pt")
    _nothing_written(tmp_path)


def test_failure_after_writing_leaves_nothing(compile_mlp, tmp_path, monkeypatch):
    """The file is written to a temporary folder and moved into place only once checked."""
    def broken_check(path):
        assert path.exists()  # it was written...
        raise RuntimeError("simulated checker failure")
    monkeypatch.setattr(writer, "check_onnx_file", broken_check)
    qm = compile_mlp()
    notes = list(qm.report().notes)
    with pytest.raises(UnsupportedError, match="writing mlp.onnx failed: RuntimeError: simulated checker failure"):
        qcompiler.export_onnx(qm, outlier_x(2, 8, 24), tmp_path / "mlp.onnx")
    _nothing_written(tmp_path)  # ...and is gone, with its temporary folder
    assert qm.report().notes == notes  # the report does not claim an export


def test_call_unlike_the_export(compile_mlp, tmp_path):
    """A session is called like the model; a call the export cannot take says why."""
    out = qcompiler.export_onnx(compile_mlp(), outlier_x(2, 8, 24), tmp_path / "mlp.onnx")
    with pytest.raises(ConfigError, match="does not fit the model's signature"):
        run_ort(out, outlier_x(2, 8, 24), outlier_x(2, 8, 24))
    with pytest.raises(UnsupportedError, match="argument .x. is a list of 2 in this call, but was a tensor"):
        run_ort(out, [1.0, 2.0])
    assert run_ort(out, x=outlier_x(1, 3, 24)).shape == (1, 3, 24)  # by keyword is fine
