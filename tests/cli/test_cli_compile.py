"""qcompiler compile: outputs, files, and the exit codes of its failures."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from qcompiler.cli import ExitCode, main


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "qcompiler"
    assert script.exists() or shutil.which("qcompiler"), "pip install -e . installs the 'qcompiler' command"


def test_compile_minilm_writes_model_and_reports(minilm_cli):
    out, r = minilm_cli
    report = json.loads(r.stdout)  # --report json: the report alone on stdout
    assert report["scheme"] == "int8-outlier" and len(report["layers"]) == 37
    assert report["totals"]["quantized"] == 37 and report["output_cosine"] > 0.99
    ffn = next(layer for layer in report["layers"] if layer["layer"] == "encoder.layer.0.intermediate.dense")
    assert ffn["outlier_dims"] and ffn["shape"] == [1536, 384]  # MiniLM's FFN inputs carry outlier dims
    for name in ("model.safetensors", "qcompiler.json", "report.md", "report.json", "graph.html"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "report.json").read_text())["layers"] == report["layers"]
    assert "| `encoder.layer.0.intermediate.dense` | 1536x384 |" in (out / "report.md").read_text()
    pngs = sorted((out / "plots").glob("*.png"))
    assert [p.name.split("_")[0] for p in pngs] == ["grid", "outliers"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000 for p in pngs)
    assert "saved" in r.stderr and "calibrating" in r.stderr  # progress and the closing line go to stderr
    desc = json.loads((out / "qcompiler.json").read_text())
    assert desc["metadata"]["source"]["model"] == "minilm"
    assert desc["metadata"]["calibration"]["sentences"] == 8  # the empty line is skipped


def test_help_is_usable(run_qcompiler):
    r = run_qcompiler("--help")
    assert r.returncode == 0
    assert all(c in r.stdout for c in ("compile", "inspect", "export", "bench", "exit codes"))
    r = run_qcompiler("compile", "--help")
    assert r.returncode == 0 and "int8-outlier" in r.stdout and "--calib" in r.stdout and "examples:" in r.stdout


def test_usage_errors_exit_2(run_qcompiler, tmp_path, capsys):
    r = run_qcompiler("compile", "minilm", "-o", "no_such_option=1", "--out", tmp_path / "x")
    assert r.returncode == ExitCode.USAGE
    assert "has no option 'no_such_option'" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    # The same parser in-process (no model is loaded before these fail).
    assert main([]) == ExitCode.USAGE
    with pytest.raises(SystemExit) as e:
        main(["compile", "minilm", "--scheme", "int3-magic", "--out", str(tmp_path / "x")])
    assert e.value.code == ExitCode.USAGE and "invalid choice" in capsys.readouterr().err
    assert main(["compile", "minilm", "-o", "threshold", "--out", str(tmp_path / "x")]) == ExitCode.USAGE
    assert "KEY=VALUE" in capsys.readouterr().err


def test_input_errors_exit_3(run_qcompiler, tmp_path):
    r = run_qcompiler("compile", "minilm", "--calib", tmp_path / "missing.txt", "--out", tmp_path / "x")
    assert r.returncode == ExitCode.INPUT and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "notamodel").mkdir()
    r = run_qcompiler("compile", tmp_path / "notamodel", "--out", tmp_path / "x")
    assert r.returncode == ExitCode.INPUT and "config.json" in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("qcompiler: error: ")]
