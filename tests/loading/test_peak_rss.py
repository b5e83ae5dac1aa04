"""Peak host memory of from_pretrained and load(dir) on a ~100M-parameter model: below the fp16
checkpoint's size, each measured in a fresh subprocess.

Every subprocess first runs the same call on a tiny checkpoint, so the imports and one-time
set-up (torch.export, transformers' model code) are paid before measuring; what is measured is
the rise of the resident set size during the call (sampled every 5 ms) over the RSS at its start.

The model: 13 Llama blocks of hidden 768 / MLP 2048 and a vocabulary of 8192 (~95M parameters):
blocks are ~87% of its weights, as in Llama-3-8B, so the test measures what streaming saves.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import gc, json, sys, torch, qcompiler
from qcompiler.memory_usage import PeakMemory
mode, scheme, tiny, big, out = sys.argv[1:6]
g = torch.Generator().manual_seed(0)
calib = [torch.randint(3, 256, (1, 16), generator=g)] if scheme == "int8-outlier" else None
def call(path, saved):
    if mode == "from_pretrained":
        qm = qcompiler.from_pretrained(path, scheme=scheme, calibration_data=calib, dtype=torch.float16, progress=False)
        return qm, (lambda: qcompiler.save(qm, saved))
    return qcompiler.load(saved), None
qm, save = call(tiny, out + "-tiny")
if save: save()
del qm, save
from qcompiler.memory_usage import release_host_memory
release_host_memory()
with PeakMemory(interval=0.005) as pm:
    qm, save = call(big, out)
if save: save()
print(json.dumps({"start": pm.host_start, "peak": pm.host_bytes}))
"""


def _checkpoint(path: Path, hidden: int, inter: int, layers: int, vocab: int, heads: int) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads // 3 or 1, max_position_embeddings=256,
                      tie_word_embeddings=False)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).half().eval()
    model.save_pretrained(path, max_shard_size="60MB")
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("rss")
    params = _checkpoint(root / "big", 768, 2048, 13, 8192, 12)
    _checkpoint(root / "tiny", 96, 128, 2, 256, 3)
    size = sum(p.stat().st_size for p in (root / "big").glob("*.safetensors"))
    return root, params, size


def _measure(mode, scheme, root):
    res = subprocess.run([sys.executable, "-c", SCRIPT, mode, scheme, str(root / "tiny"), str(root / "big"),
                          str(root / f"saved-{scheme}")], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return got["peak"] - got["start"]


@pytest.mark.parametrize("scheme", ["w4-weight-only", "int8-outlier"])
def test_peak_rss_below_fp16_checkpoint(scheme, checkpoints):
    root, params, size = checkpoints
    assert 90e6 < params < 130e6
    rise_quantize = _measure("from_pretrained", scheme, root)
    rise_load = _measure("load", scheme, root)
    print(f"\n{scheme}: {params / 1e6:.0f}M params, fp16 checkpoint {size / 2**20:.0f} MiB; peak RSS rise "
          f"from_pretrained {rise_quantize / 2**20:.0f} MiB ({rise_quantize / size:.2f}x), "
          f"load(dir) {rise_load / 2**20:.0f} MiB ({rise_load / size:.2f}x)")
    assert rise_quantize < size
    assert rise_load < size
