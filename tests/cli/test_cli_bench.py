"""qcompiler bench: timings of the saved model and its float original, as JSON."""

import json

from qcompiler.cli import ExitCode


def test_bench_json(minilm_cli, run_qcompiler):
    r = run_qcompiler("bench", minilm_cli[0], "--json", "--iters", "2", "--warmup", "0", "--batch-size", "2",
                      "--seq-len", "16", "--threads", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    for side in ("float", "quantized"):
        assert res[side]["median_ms"] > 0 and res[side]["tokens_per_s"] > 0
    assert res["speedup"] > 0 and res["threads"] == 1 and res["batch_size"] == 2
    assert res["output_cosine"] > 0.99  # the int8-outlier MiniLM tracks the float one
    assert res["model_bytes"]["quantized"] < res["model_bytes"]["float"]


def test_bench_bad_arguments(minilm_cli, run_qcompiler):
    r = run_qcompiler("bench", minilm_cli[0], "--iters", "0")
    assert r.returncode == ExitCode.USAGE and "positive" in r.stderr

