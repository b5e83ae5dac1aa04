"""Prefill-size int8 linears: activation quantization as a separate kernel vs fused into the GEMM.

For each Llama-3-8B layer shape (N x K: q/o 4096x4096, k/v 1024x4096, gate/up 14336x4096, down
4096x14336) at M = 2048 and 512 rows, one run, one card:

* ``fp16``: ``F.linear`` (cuBLAS), the baseline;
* ``separate``: ``int8_outlier_linear(..., act_quant=SEPARATE)`` = ``quantize_rowwise`` (X ->
  int8 + row scales + outlier columns) then the int8 GEMM; and each part on its own;
* ``fused``: ``act_quant=FUSED`` = ``row_absmax`` (M floats) then the GEMM that quantizes X tiles
  in registers; and each part on its own;
* ``quant share``: the quantize kernel's time over the separate path's total; ``absmax share``:
  the prologue's over the fused total (the issue's goal: fused, or <= 5% of the GEMM's time).

Variants: ``int8-outlier`` (4 outlier columns x20, mask, fp16 outlier weights) and
``w8a8-smoothquant`` (no outlier columns: the same op with an empty index list).

Timing: every call is captured into one CUDA graph, cycling over enough copies of the weight that
together they exceed the L2 (so no call finds its weight cached, as in a real prefill where each
layer has its own), and the graph is replayed: GPU time only, and capturing checks the op is
CUDA-graph-safe. X stays the same (in a prefill it was just written by the norm). ``equal``:
the fused output equals the separate one bit for bit on this input. JSON rows to
``$OUT/bench_int8_prefill.json`` (rewritten after each row).

    PYTHONPATH=.:benchmarks python benchmarks/bench_int8_prefill.py [--ms 2048,512] \
        [--shapes 4096x4096,...] [--variants int8-outlier,w8a8-smoothquant]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from timing import JsonResults, graph_replay_us, run_meta  # noqa: E402 - sibling module

__all__ = ["main"]

SHAPES = {"q/o": (4096, 4096), "k/v": (1024, 4096), "gate/up": (14336, 4096), "down": (4096, 14336)}
N_OUTLIERS, OUTLIER_SCALE = 4, 20.0
_L2_BYTES = 64 * 2**20  # above the H100/H200 L2 (50 MB): copies of W must add up to twice this


def _copies(weight_bytes: int) -> int:
    return max(2, min(16, math.ceil(2 * _L2_BYTES / weight_bytes)))


def graph_us(calls, reps: int = 5) -> float:
    """GPU µs per call: the calls captured into one CUDA graph, replayed ``reps`` times
    (median wall time of the calls where there is no CUDA: a CPU smoke run)."""
    for f in calls:  # warm-up: compiles and autotunes every key
        f()
    if not torch.cuda.is_available():
        times = []
        for f in calls:
            t = time.perf_counter()
            f()
            times.append((time.perf_counter() - t) * 1e6)
        return statistics.median(times)
    return graph_replay_us(calls, reps)


def _problem(m, n, k, n_out, dev, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(m, k, device=dev, generator=g)
    idx = torch.randperm(k, device=dev, generator=g)[:n_out].sort().values
    x[:, idx] *= OUTLIER_SCALE
    mask = torch.zeros(k, dtype=torch.int8, device=dev)
    mask[idx] = 1

    def int8_weight(i):
        gi = torch.Generator(device=dev).manual_seed(seed + 1 + i)
        wq = torch.randint(-127, 128, (n, k), device=dev, generator=gi, dtype=torch.int8)
        wq[:, idx] = 0
        ws = torch.rand(n, device=dev, generator=gi) * 2 + 1
        wo = (torch.randn(n, n_out, device=dev, generator=gi) * 0.02).half()
        return wq, ws, wo

    copies = _copies(n * k)
    ints = [int8_weight(i) for i in range(copies)]
    halves = [torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02 for _ in range(_copies(2 * n * k))]
    bias = torch.randn(n, device=dev).half() * 0.1
    return x.half(), idx, mask, ints, halves, bias


def _row(variant, name, m, n, k, dev):
    from qcompiler.backends.triton.act_quant import ActQuant
    from qcompiler.backends.triton.int8_epilogue import OUTLIERS_GATHER_X, OUTLIERS_NONE
    from qcompiler.backends.triton.int8_linear import int8_linear
    from qcompiler.backends.triton.int8_linear_fused_quant import launch_int8_linear_fused_quant
    from qcompiler.backends.triton.quantize_rowwise import quantize_rowwise
    from qcompiler.backends.triton.row_absmax import row_absmax

    ops = torch.ops.qcompiler_triton
    n_out = N_OUTLIERS if variant == "int8-outlier" else 0
    x, idx, mask, ints, halves, bias = _problem(m, n, k, n_out, dev)
    mask_or_none = mask if n_out else None
    wo_or_none = (lambda wo: wo if n_out else None)
    xq, xs, xo = quantize_rowwise(x, idx, mask_or_none)
    scale = row_absmax(x, mask_or_none).reshape(-1)
    y_buf = torch.empty(m, n, dtype=torch.float16, device=dev)

    def linear(mode, w):
        wq, ws, wo = w
        return lambda: ops.int8_outlier_linear(x, wq, ws, idx, mask_or_none, wo_or_none(wo), bias, int(mode))

    def sep_gemm(w):
        wq, ws, wo = w
        return lambda: int8_linear(xq, xs, wq, ws, xo if n_out else None, wo_or_none(wo), bias, torch.float16)

    def fused_gemm(w):
        wq, ws, wo = w
        how = OUTLIERS_GATHER_X if n_out else OUTLIERS_NONE
        return lambda: launch_int8_linear_fused_quant(x, scale, mask_or_none, wq, ws, wo_or_none(wo),
                                                      idx if n_out else None, None, bias, y_buf, how)

    row = {"variant": variant, "shape": name, "m": m, "n": n, "k": k, "outlier_cols": n_out,
           "weight_copies": len(ints)}
    row["fp16_us"] = graph_us([lambda w=w: F.linear(x, w, bias) for w in halves])
    row["sep_quant_us"] = graph_us([lambda: quantize_rowwise(x, idx, mask_or_none)] * 8)
    row["sep_gemm_us"] = graph_us([sep_gemm(w) for w in ints])
    row["sep_us"] = graph_us([linear(ActQuant.SEPARATE, w) for w in ints])
    row["fused_absmax_us"] = graph_us([lambda: row_absmax(x, mask_or_none)] * 8)
    row["fused_gemm_us"] = graph_us([fused_gemm(w) for w in ints])
    row["fused_us"] = graph_us([linear(ActQuant.FUSED, w) for w in ints])
    y_sep, y_fused = linear(ActQuant.SEPARATE, ints[0])(), linear(ActQuant.FUSED, ints[0])()
    row["equal"] = bool(torch.equal(y_sep, y_fused))
    row["max_abs_diff"] = (y_sep.float() - y_fused.float()).abs().max().item()
    row["quant_share_sep"] = row["sep_quant_us"] / row["sep_us"]
    row["absmax_share_fused"] = row["fused_absmax_us"] / row["fused_us"]
    row["fused_vs_fp16"] = row["fp16_us"] / row["fused_us"]
    row["sep_vs_fp16"] = row["fp16_us"] / row["sep_us"]
    row["fused_tops"] = 2 * m * n * k / (row["fused_us"] * 1e-6) / 1e12
    return row


def _configs() -> dict:
    """The autotuned config of every key the kernels saw (what ran)."""
    out = {}
    for name in ("int8_linear", "int8_linear_fused_quant", "quantize_rowwise", "row_absmax"):
        # sys.modules: the package re-exports functions named like these modules
        launcher = sys.modules[f"qcompiler.backends.triton.{name}"]._LAUNCH
        out[name] = {str(key): {k: v for k, v in meta.items() if isinstance(v, (int, bool))}
                     for key, meta in launcher.meta.items()}
    return out


def _table(rows) -> str:
    head = ("| variant | shape N×K | M | fp16 µs | sep: quant + GEMM = total µs | quant share | "
            "fused: absmax + GEMM = total µs | absmax share | fused/fp16 | sep/fp16 | equal |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['shape']} | {r['m']} | error: {r['error']} |")
            continue
        lines.append(
            f"| {r['variant']} | {r['n']}×{r['k']} | {r['m']} | {r['fp16_us']:.1f} | "
            f"{r['sep_quant_us']:.1f} + {r['sep_gemm_us']:.1f} = {r['sep_us']:.1f} | {r['quant_share_sep']:.1%} | "
            f"{r['fused_absmax_us']:.1f} + {r['fused_gemm_us']:.1f} = {r['fused_us']:.1f} | "
            f"{r['absmax_share_fused']:.1%} | {r['fp16_us'] / r['fused_us']:.2f}× | "
            f"{r['fp16_us'] / r['sep_us']:.2f}× | {r['equal']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ms", default="2048,512")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="names (q/o,k/v,gate/up,down) or NxK")
    ap.add_argument("--variants", default="int8-outlier,w8a8-smoothquant")
    args = ap.parse_args()
    import qcompiler.backends.triton  # noqa: F401 - registers torch.ops.qcompiler_triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [(s, SHAPES[s]) if s in SHAPES else (s, tuple(int(v) for v in s.split("x")))
              for s in args.shapes.split(",")]
    results = JsonResults("bench_int8_prefill.json", run_meta())
    for m in (int(v) for v in args.ms.split(",")):
        for variant in args.variants.split(","):
            for name, (n, k) in shapes:
                try:
                    row = _row(variant, name, m, n, k, dev)
                except Exception as e:  # noqa: BLE001 - one failing shape must not lose the others
                    traceback.print_exc()
                    row = {"variant": variant, "shape": name, "m": m, "n": n, "k": k,
                           "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
                results.add(row)
                print(_table([row]).splitlines()[-1], flush=True)
                if dev == "cuda":
                    torch.cuda.empty_cache()
    results.write(configs=_configs())
    print(f"\n{results.meta['card']}, {results.meta['date']}, {results.meta['command']}")
    print(_table(results.results))


if __name__ == "__main__":
    main()
