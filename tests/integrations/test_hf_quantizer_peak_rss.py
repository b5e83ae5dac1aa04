"""Peak host memory of transformers' ``from_pretrained`` through qcompiler's quantizer, each measured
in a fresh subprocess as tests/loading/test_peak_rss.py does (same ~95M-parameter Llama, same
allocator setting, the imports and one-time set-up paid first on a tiny checkpoint):

- ``quantization_config=QCompilerConfig("w4-weight-only")`` streams the checkpoint block by block
  (qcompiler/integrations/streaming_quantize.py): its rise must stay below the fp16 checkpoint's
  size, which loading the float model first (the path before) cannot;
- a directory ``qcompiler.save`` wrote, read by plain ``from_pretrained``, stays below it too.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}  # why: tests/loading/test_peak_rss.py

SCRIPT = r"""
import json, sys, torch, qcompiler
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM
from qcompiler.memory_usage import PeakMemory, release_host_memory
mode, tiny, big, out = sys.argv[1:5]
def call(path, saved):
    if mode == "stream":
        return AutoModelForCausalLM.from_pretrained(path, quantization_config=qcompiler.QCompilerConfig(
            "w4-weight-only"), dtype=torch.float16)
    if mode == "compile-after":  # what the quantizer did before streaming: the float model, then compile
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16)
        ids = (torch.arange(8) % m.config.vocab_size).reshape(1, 8)
        return qcompiler.compile(m, "w4-weight-only", example_inputs={"input_ids": ids}, progress=False)
    return AutoModelForCausalLM.from_pretrained(saved)
m = call(tiny, out + "-tiny")
if mode == "stream":
    qcompiler.save(m, out + "-tiny")
del m
release_host_memory()
with PeakMemory(interval=0.005) as pm:
    m = call(big, out)
if mode == "stream":
    qcompiler.save(m, out)  # for the "native" run
print(json.dumps({"start": pm.host_start, "peak": pm.host_bytes}))
"""


def _run(mode: str, root: Path) -> int:
    p = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(root / "tiny"), str(root / "big"),
                        str(root / "saved")], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **ALLOCATOR})
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    return got["peak"] - got["start"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "tests" / "loading"))
    try:
        from test_peak_rss import _checkpoint  # the same model as the streaming loader's own RSS test
    finally:
        sys.path.pop(0)
    root = tmp_path_factory.mktemp("hf-rss")
    params = _checkpoint(root / "big", 768, 2048, 13, 8192, 12)
    _checkpoint(root / "tiny", 96, 128, 2, 256, 3)
    return root, params, sum(p.stat().st_size for p in (root / "big").glob("*.safetensors"))


def test_quantizer_streams_below_fp16_checkpoint(checkpoints):
    root, params, size = checkpoints
    stream = _run("stream", root)
    native = _run("native", root)
    before = _run("compile-after", root)
    print(f"\n{params / 1e6:.0f}M params, fp16 checkpoint {size / 2**20:.0f} MiB; peak RSS rise of from_pretrained: "
          f"QCompilerConfig('w4-weight-only') {stream / 2**20:.0f} MiB ({stream / size:.2f}x), "
          f"the qcompiler-saved dir {native / 2**20:.0f} MiB ({native / size:.2f}x), "
          f"float load + compile (the path before) {before / 2**20:.0f} MiB ({before / size:.2f}x)")
    assert stream < size, (stream, size)
    assert native < size, (native, size)
