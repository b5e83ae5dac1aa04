"""qcompiler export: ONNX from a saved directory; a clear message when export is missing."""

import pytest

import qcompiler
from qcompiler.cli import ExitCode, main


def test_export_onnx(minilm_cli, run_qcompiler, tmp_path):
    r = run_qcompiler("export", minilm_cli[0], "--onnx", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr[-3000:]
    onnx = pytest.importorskip("onnx", reason="checking the file needs onnx (pip install onnx)")
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert {i.name for i in model.graph.input} >= {"input_ids", "attention_mask"}


def test_export_not_available(minilm_cli, monkeypatch, capsys, tmp_path):
    monkeypatch.delattr(qcompiler, "export_onnx", raising=False)
    code = main(["export", str(minilm_cli[0]), "--onnx", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == ExitCode.UNAVAILABLE and "not available" in err and "hint:" in err
