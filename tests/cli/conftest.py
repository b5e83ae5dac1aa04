"""The CLI tests run the installed ``qcompiler`` command in a subprocess; the MiniLM model is
compiled once per session and every command test reads that directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "qcompiler"
SENTENCES = """The cat sat quietly on the warm windowsill all afternoon.
Quantum computers exploit superposition to explore many states at once.

She ordered a cappuccino and a slice of lemon cake.
The central bank raised interest rates by a quarter point.
Photosynthesis converts sunlight, water and carbon dioxide into sugar.
Our flight to Tokyo was delayed by three hours because of fog.
The defender cleared the ball off the line in the final minute.
Please restart the router if the connection keeps dropping.
"""


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # The console script is what users run; `python -m qcompiler.cli` only where it is not installed
    # (test_console_script_is_installed fails then).
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "qcompiler.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "160"}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def run_qcompiler():
    """``run_qcompiler("inspect", dir)`` -> CompletedProcess of the installed command."""
    return _run


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli-calib") / "sentences.txt"
    p.write_text(SENTENCES, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def minilm_cli(tmp_path_factory, calib_file):
    """``qcompiler compile minilm`` run once: (output dir, CompletedProcess)."""
    out = tmp_path_factory.mktemp("cli") / "minilm-int8"
    r = _run("compile", "minilm", "--scheme", "int8-outlier", "--calib", calib_file, "--batch-size", "4",
             "--out", out, "--report", "json", "--plots", "--graph")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r
