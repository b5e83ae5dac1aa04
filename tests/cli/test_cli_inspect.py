"""qcompiler inspect: the report in three formats, verification, plots, bad directories."""

import json
import shutil

from qcompiler.cli import ExitCode, main


def test_inspect_table_markdown_json(minilm_cli, run_qcompiler, capsys):
    out, _ = minilm_cli
    r = run_qcompiler("inspect", out)
    assert r.returncode == 0, r.stderr
    assert "encoder.layer.0.intermediate.dense" in r.stdout and "total 37/37 quantized" in r.stdout
    assert "BertModel" in r.stdout and "cosine" in r.stdout
    # The other formats in-process: same code path, no second interpreter start.
    assert main(["inspect", str(out), "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("## qcompiler report")
    assert main(["inspect", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((out / "report.json").read_text())


def test_inspect_verify_and_plots(minilm_cli, run_qcompiler, tmp_path, capsys):
    out, _ = minilm_cli
    r = run_qcompiler("inspect", out, "--verify", "--plots", tmp_path / "plots", "--layer", "2.intermediate.dense")
    assert r.returncode == 0, r.stderr
    assert "files verified" in r.stdout
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["grid_encoder.layer.2.intermediate.dense.png", "outliers_encoder.layer.2.intermediate.dense.png"]
    assert main(["inspect", str(out), "--plots", str(tmp_path / "p2"), "--layer", "dense"]) == ExitCode.USAGE
    assert "matches" in capsys.readouterr().err


def test_inspect_damaged_directory(minilm_cli, run_qcompiler, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(minilm_cli[0], bad)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    r = run_qcompiler("inspect", bad, "--verify")
    assert r.returncode == ExitCode.INPUT and "truncated" in r.stderr and "Traceback" not in r.stderr
    r = run_qcompiler("inspect", bad, "--verify", "--debug")
    assert r.returncode == ExitCode.INPUT and "Traceback" in r.stderr
    assert main(["inspect", str(tmp_path / "nothing-here")]) == ExitCode.INPUT
    assert "qcompiler.json" in capsys.readouterr().err
