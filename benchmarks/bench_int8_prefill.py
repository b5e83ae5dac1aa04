"""Prefill-size int8 linears: which engine runs the int8 GEMM, and what the activation quantize costs.

For each Llama-3-8B layer shape (N x K: q/o 4096x4096, k/v 1024x4096, gate/up 14336x4096, down
4096x14336) at M = 2048 (both variants) and M = 512, 8192 (int8-outlier), one run, one card:

* ``fp16``: ``F.linear`` (cuBLAS), the baseline;
* ``quant``: ``quantize_rowwise`` alone (X -> int8 + row scales + outlier columns);
* ``GEMM <engine>``: ``int8_linear(..., gemm=engine)`` on the quantized X: ``triton`` (the pointer
  kernel), ``int_mm`` (cuBLASLt ``torch._int_mm`` + the Triton epilogue kernel), ``tma`` (TMA
  loads, persistent tile loop);
* ``op old``: the whole ``int8_outlier_linear`` as it shipped before (AUTO = triton); ``op
  <engine>``: the same op with AUTO's thresholds set so it takes that engine; ``best``: the fastest;
* ``--fused``: also the older comparison of X quantized inside the GEMM (``act_quant=fused``).

Then the per-layer sums (q, k, v, o, gate, up, down) per variant and M.

Variants: ``int8-outlier`` (4 outlier columns x20, mask, fp16 outlier weights) and
``w8a8-smoothquant`` (no outlier columns: the same op with an empty index list).

Timing: every call is captured into one CUDA graph, cycling over enough copies of the weight that
together they exceed the L2 (so no call finds its weight cached, as in a real prefill where each
layer has its own), and the graph is replayed: GPU time only, and capturing checks the op is
CUDA-graph-safe. X stays the same (in a prefill it was just written by the norm). ``diff_<engine>``:
max |y - y_old| of the op. JSON rows to ``$OUT/bench_int8_prefill.json`` (rewritten after each row).

    PYTHONPATH=.:benchmarks python benchmarks/bench_int8_prefill.py [--ms 2048] [--extra-ms 512,8192] \
        [--shapes 4096x4096,...] [--variants int8-outlier,w8a8-smoothquant] [--fused]
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
from timing import JsonResults, error_line, graph_replay_us, run_meta  # noqa: E402 - sibling module

__all__ = ["main"]

SHAPES = {"q/o": (4096, 4096), "k/v": (1024, 4096), "gate/up": (14336, 4096), "down": (4096, 14336)}
TINY = {"q/o": (64, 64), "k/v": (32, 64), "gate/up": (128, 64), "down": (64, 128)}  # --tiny: CPU smoke run
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


ENGINES = {"triton": 1, "int_mm": 2, "tma": 3}  # int8_gemm_engine.GEMM_TRITON / _INT_MM / _TMA
# Each linear of one Llama-3-8B layer: q, o (4096x4096), k, v (1024x4096), gate, up, down.
LAYER = {"q/o": 2, "k/v": 2, "gate/up": 2, "down": 1}


def _forced(engine: int):
    """The AUTO thresholds set so that every M >= 17 takes ``engine`` (restored after)."""
    import contextlib
    from qcompiler.backends.triton import int8_gemm_engine as eng

    @contextlib.contextmanager
    def ctx():
        saved = eng.INT_MM_MIN_M, eng.TMA_MIN_M
        eng.INT_MM_MIN_M = 17 if engine == 2 else None
        eng.TMA_MIN_M = 17 if engine == 3 else None
        try:
            yield
        finally:
            eng.INT_MM_MIN_M, eng.TMA_MIN_M = saved
    return ctx()


def _row(variant, name, m, n, k, dev, fused=False):
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
    y_buf = torch.empty(m, n, dtype=torch.float16, device=dev)

    def linear(mode, w):
        wq, ws, wo = w
        return lambda: ops.int8_outlier_linear(x, wq, ws, idx, mask_or_none, wo_or_none(wo), bias, int(mode))

    def gemm(w, engine):
        wq, ws, wo = w
        return lambda: int8_linear(xq, xs, wq, ws, xo if n_out else None, wo_or_none(wo), bias, torch.float16,
                                   gemm=engine)

    row = {"variant": variant, "shape": name, "m": m, "n": n, "k": k, "outlier_cols": n_out,
           "weight_copies": len(ints)}
    row["fp16_us"] = graph_us([lambda w=w: F.linear(x, w, bias) for w in halves])
    row["quant_us"] = graph_us([lambda: quantize_rowwise(x, idx, mask_or_none)] * 8)
    row["old_us"] = graph_us([linear(ActQuant.SEPARATE, w) for w in ints])  # as shipped before: AUTO = Triton
    y_old = linear(ActQuant.SEPARATE, ints[0])()
    for e_name, e in ENGINES.items():
        try:
            row[f"gemm_{e_name}_us"] = graph_us([gemm(w, e) for w in ints])
            with _forced(e):
                row[f"op_{e_name}_us"] = graph_us([linear(ActQuant.SEPARATE, w) for w in ints])
                y = linear(ActQuant.SEPARATE, ints[0])()
            row[f"diff_{e_name}"] = (y.float() - y_old.float()).abs().max().item()
            row[f"tops_{e_name}"] = 2 * m * n * k / (row[f"gemm_{e_name}_us"] * 1e-6) / 1e12
        except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the row
            traceback.print_exc()
            row[f"error_{e_name}"] = error_line(exc)
    ops_us = {e: row[f"op_{e}_us"] for e in ENGINES if f"op_{e}_us" in row}
    row["best_engine"] = min(ops_us, key=ops_us.get)
    row["best_us"] = ops_us[row["best_engine"]]
    row["quant_share_best"] = row["quant_us"] / row["best_us"]
    if fused:
        scale = row_absmax(x, mask_or_none).reshape(-1)

        def fused_gemm(w):
            wq, ws, wo = w
            how = OUTLIERS_GATHER_X if n_out else OUTLIERS_NONE
            return lambda: launch_int8_linear_fused_quant(x, scale, mask_or_none, wq, ws, wo_or_none(wo),
                                                          idx if n_out else None, None, bias, y_buf, how)
        row["fused_absmax_us"] = graph_us([lambda: row_absmax(x, mask_or_none)] * 8)
        row["fused_gemm_us"] = graph_us([fused_gemm(w) for w in ints])
        row["fused_us"] = graph_us([linear(ActQuant.FUSED, w) for w in ints])
    return row


def _configs() -> dict:
    """The autotuned config of every key the kernels saw (what ran)."""
    out = {}
    for name in ("int8_linear", "int8_linear_int_mm", "quantize_rowwise", "int8_linear_fused_quant", "row_absmax"):
        # sys.modules: the package re-exports functions named like these modules
        launcher = sys.modules[f"qcompiler.backends.triton.{name}"]._LAUNCH
        out[name] = {str(key): {k: v for k, v in meta.items() if isinstance(v, (int, bool))}
                     for key, meta in launcher.meta.items()}
    out["int8_linear_tma"] = {str(k): v for k, v in sys.modules["qcompiler.backends.triton.int8_linear_tma"]._BEST.items()}
    return out


def _us(r, key):
    v = r.get(key)
    return f"{v:.1f}" if isinstance(v, float) else "–"


def _table(rows) -> str:
    head = ("| variant | N×K | M | fp16 µs | quant µs | GEMM µs: triton / int_mm / tma | op µs: old / triton / "
            "int_mm / tma | best | best vs fp16 | old vs fp16 | quant share |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['shape']} | {r['m']} | error: {r['error']} |")
            continue
        lines.append(
            f"| {r['variant']} | {r['n']}×{r['k']} | {r['m']} | {r['fp16_us']:.1f} | {r['quant_us']:.1f} | "
            + " / ".join(_us(r, f"gemm_{e}_us") for e in ENGINES) + " | " + _us(r, "old_us") + " / "
            + " / ".join(_us(r, f"op_{e}_us") for e in ENGINES)
            + f" | {r['best_engine']} | {r['fp16_us'] / r['best_us']:.2f}× | {r['fp16_us'] / r['old_us']:.2f}× | "
              f"{r['quant_share_best']:.1%} |")
    return "\n".join(lines)


def _layer_table(rows) -> str:
    """Per-layer sums (q, k, v, o, gate, up, down) per variant and M, where all four shapes ran."""
    lines = ["| variant | M | fp16 µs | old µs | triton / int_mm / tma µs | best per shape µs | best vs fp16 | "
             "old vs fp16 |", "|" + "---|" * 8]
    keys = sorted({(r["variant"], r["m"]) for r in rows if "error" not in r})
    for variant, m in keys:
        rs = {r["shape"]: r for r in rows if r["variant"] == variant and r["m"] == m and "error" not in r}
        if set(rs) != set(LAYER):
            continue
        tot = lambda key: sum(LAYER[s] * rs[s].get(key, float("nan")) for s in LAYER)  # noqa: E731
        best = sum(LAYER[s] * rs[s]["best_us"] for s in LAYER)
        lines.append(f"| {variant} | {m} | {tot('fp16_us'):.0f} | {tot('old_us'):.0f} | "
                     + " / ".join(f"{tot(f'op_{e}_us'):.0f}" for e in ENGINES)
                     + f" | {best:.0f} | {tot('fp16_us') / best:.2f}× | {tot('fp16_us') / tot('old_us'):.2f}× |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ms", default="2048")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="names (q/o,k/v,gate/up,down) or NxK")
    ap.add_argument("--variants", default="int8-outlier,w8a8-smoothquant")
    ap.add_argument("--extra-ms", default="512,8192", help="more M values, int8-outlier only")
    ap.add_argument("--fused", action="store_true", help="also time act_quant=fused (X quantized in the GEMM)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes with the layer names (interpreter smoke run)")
    args = ap.parse_args()
    import qcompiler.backends.triton  # noqa: F401 - registers torch.ops.qcompiler_triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    named = TINY if args.tiny else SHAPES
    shapes = [(s, named[s]) if s in named else (s, tuple(int(v) for v in s.split("x")))
              for s in args.shapes.split(",")]
    results = JsonResults("bench_int8_prefill.json", run_meta())
    runs = [(int(m), v) for m in args.ms.split(",") for v in args.variants.split(",")]
    runs += [(int(m), "int8-outlier") for m in args.extra_ms.split(",") if m]
    for m, variant in runs:
        for name, (n, k) in shapes:
            try:
                row = _row(variant, name, m, n, k, dev, args.fused)
            except Exception as e:  # noqa: BLE001 - one failing shape must not lose the others
                traceback.print_exc()
                row = {"variant": variant, "shape": name, "m": m, "n": n, "k": k,
                       "error": error_line(e, 300)}
            results.add(row)
            print(_table([row]).splitlines()[-1], flush=True)
            if dev == "cuda":
                torch.cuda.empty_cache()
    results.write(configs=_configs())
    print(f"\n{results.meta['card']}, {results.meta['date']}, {results.meta['command']}")
    print(_table(results.results))
    print()
    print(_layer_table(results.results))


if __name__ == "__main__":
    main()
