"""Bug #9.6: ``--plots`` without matplotlib failed only after the whole compile; now before any
work, with an install hint that works (bug #9.7)."""

import sys

import pytest

import qcompiler.cli.compile as cli_compile
from qcompiler.cli import ExitCode, main


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError


def _no_work(*a, **k):
    raise AssertionError("the command started its work before checking --plots")


def test_compile_plots_checked_first(no_matplotlib, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli_compile, "load_base_model", _no_work)
    code = main(["compile", "minilm", "--out", str(tmp_path / "out"), "--plots", "--no-progress"])
    err = capsys.readouterr().err
    assert code == ExitCode.UNAVAILABLE
    assert "plots need matplotlib" in err and "pip install matplotlib" in err
    assert "'qcompiler[" not in err  # 'qcompiler' on PyPI is another project
    assert not (tmp_path / "out").exists()


def test_inspect_plots_checked_first(no_matplotlib, monkeypatch, tmp_path, capsys):
    import qcompiler.serialize
    monkeypatch.setattr(qcompiler.serialize, "read_description", _no_work)
    code = main(["inspect", str(tmp_path), "--plots", str(tmp_path / "plots")])
    assert code == ExitCode.UNAVAILABLE
    assert "plots need matplotlib" in capsys.readouterr().err


def test_without_plots_matplotlib_is_not_needed(no_matplotlib, monkeypatch, tmp_path):
    reached = []
    monkeypatch.setattr(cli_compile, "load_base_model", lambda *a: reached.append(a) or _no_work())
    assert main(["compile", "minilm", "--out", str(tmp_path / "out"), "--no-progress"]) == ExitCode.INTERNAL
    assert reached  # went on to load the model (where the stub stopped it)
