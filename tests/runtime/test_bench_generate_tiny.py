"""``benchmarks/bench_generate.py --tiny`` (the CPU smoke mode) runs, resumes from ``--out`` and
sends the lean rows through the lean loop with the tokens the eager model gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, rows: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--tiny", "--rows", rows,
                           "--prefill", "0", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_tiny_bench_runs_and_resumes(tmp_path):
    out = tmp_path / "res.json"
    kept = {"decode_b1_tok_s": 1.0, "path": "from an earlier run"}  # a row a previous command finished
    out.write_text(json.dumps({"results": {"fp16-eager": kept, "fp16-lean": {"error": "earlier failure"}}}))
    printed = _run(out, "fp16-eager,fp16-lean,qc-w8-weight-only")
    results = json.loads(out.read_text())["results"]
    assert "kept from" in printed and results["fp16-eager"] == kept  # finished rows are not run again
    for row in ("fp16-lean", "qc-w8-weight-only"):  # failed and missing rows are
        assert results[row]["path"].startswith("lean decode loop"), results[row]
        assert results[row]["eager_tokens_equal"] == "5/5"
    assert "| qc-w8-weight-only | lean decode loop" in printed


def test_row_suffixes_pick_the_lean_loop_settings():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from generate_rows import ROWS, row_builder
    build, over = row_builder("qc-w4-weight-only+graph-step+eager-prompt")
    assert build is ROWS["qc-w4-weight-only"] and over == {"lean_step": "cuda-graph", "lean_prefill": "eager"}
    assert row_builder("fp16-lean+compiled-step")[1] == {"lean_step": "compiled-cuda-graph"}
    for bad in ("fp16-eager+graph-step", "qc-w4+compiled-step", "nope"):  # not a lean row / not a row
        try:
            row_builder(bad)
        except KeyError:
            continue
        raise AssertionError(f"{bad} was accepted")
