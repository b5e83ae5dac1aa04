"""Prefill-size weight-only linears: which engine feeds the tensor cores from packed codes.

For each Llama-3-8B layer shape at M = 2048 (and ``--ms``), formats w8 (per channel), w4 (g128,
symmetric) and NF4 (b64, double-quantized), one run, one card:

* ``fp16``: ``F.linear`` (cuBLAS), the baseline;
* ``dequant``: W dequantized whole to fp16, then ``F.linear`` (what shipped: ``ENGINE_DEQUANT``);
  ``dequant only``: the dequantize kernel alone;
* ``chunked <MB>``: ``ENGINE_CHUNKED``, that many MB of fp16 W per chunk into one reused buffer;
* ``mixed``: ``ENGINE_MIXED``, the mixed-input Triton GEMM with ``MIXED_CONFIG`` (and ``mixed 256``:
  128x256 tiles);
* per-layer sums (q, k, v, o, gate, up, down) and each engine vs fp16.

Timing as in ``bench_int8_prefill.py`` (one CUDA graph over copies of the weight that exceed the
L2, replayed; GPU time only). ``err``: max |y - y_dequant| / max |y_dequant| per engine.
JSON rows to ``$OUT/bench_weight_only_prefill.json``.

    PYTHONPATH=.:benchmarks python benchmarks/bench_weight_only_prefill.py [--ms 2048] [--formats w8,w4,nf4]
    TRITON_INTERPRET=1 PYTHONPATH=.:benchmarks python benchmarks/bench_weight_only_prefill.py --tiny
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bench_int8_prefill import LAYER, SHAPES, TINY, _copies, graph_us  # noqa: E402 - sibling module
from timing import JsonResults, error_line, run_meta  # noqa: E402

__all__ = ["main"]

FORMATS = ("w8", "w4", "nf4")
CHUNK_MB = (16, 8)
MIXED_256 = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=3)


def _operand(fmt: str, w: torch.Tensor):
    from qcompiler.backends.triton._weight_operand import nf4_operand, uint_operand
    from qcompiler.quant import quantize_uint
    from qcompiler.quant.nf4 import DOUBLE_QUANT_BLOCK, double_quantize, quantize_nf4
    from qcompiler.quant.packing import pack_int4
    k = w.shape[1]
    if fmt == "nf4":
        codes, absmax, b = quantize_nf4(w.float(), 64)
        aq, a2, off = double_quantize(absmax)
        return nf4_operand(pack_int4(codes), aq, a2, off, b, DOUBLE_QUANT_BLOCK, k, w.device)
    bits, group = (8, 0) if fmt == "w8" else (4, 128)
    q = quantize_uint(w.float(), bits, group, True)
    qw = pack_int4(q.codes) if bits == 4 else q.codes
    return uint_operand(qw, q.scales, q.zeros, bits, q.group_size, k, w.device)


def _row(fmt, name, m, n, k, dev):
    from qcompiler.backends.triton import weight_only_prefill as wp
    from qcompiler.backends.triton.dequantize_weight import dequantize_weight

    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(m, k, device=dev, generator=g).half()
    bias = (torch.randn(n, device=dev, generator=g) * 0.1).half()
    packed_bytes = n * k // (2 if fmt in ("w4", "nf4") else 1)
    ws = [_operand(fmt, torch.randn(n, k, device=dev, generator=g) * 0.02) for _ in range(_copies(packed_bytes))]
    halves = [torch.randn(n, k, device=dev, dtype=torch.float16, generator=g) * 0.02
              for _ in range(_copies(2 * n * k))]

    def engine(e, **kw):
        return [lambda w=w: wp.prefill_linear(x, w, bias, engine=e, **kw) for w in ws]

    row = {"format": fmt, "shape": name, "m": m, "n": n, "k": k, "weight_copies": len(ws)}
    row["fp16_us"] = graph_us([lambda w=w: F.linear(x, w, bias) for w in halves])
    row["dequant_only_us"] = graph_us([lambda w=w: dequantize_weight(w, torch.float16) for w in ws])
    runs = {"dequant": dict(e=wp.ENGINE_DEQUANT)}
    runs.update({f"chunked{mb}": dict(e=wp.ENGINE_CHUNKED, chunk_bytes=mb << 20) for mb in CHUNK_MB})
    runs["mixed"] = dict(e=wp.ENGINE_MIXED)
    runs["mixed256"] = dict(e=wp.ENGINE_MIXED, config=MIXED_256)
    y_ref = wp.prefill_linear(x, ws[0], bias, engine=wp.ENGINE_DEQUANT).float()
    for label, spec in runs.items():
        spec = dict(spec)
        e = spec.pop("e")
        try:
            row[f"{label}_us"] = graph_us(engine(e, **spec))
            y = wp.prefill_linear(x, ws[0], bias, engine=e, **spec).float()
            row[f"{label}_err"] = ((y - y_ref).abs().max() / y_ref.abs().max()).item()
        except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the row
            traceback.print_exc()
            row[f"{label}_error"] = error_line(exc)
    timed = {lab: row[f"{lab}_us"] for lab in runs if f"{lab}_us" in row}
    row["best"] = min(timed, key=timed.get)
    row["best_us"] = timed[row["best"]]
    return row, list(runs)


def _table(rows, labels) -> str:
    lines = ["| format | N×K | M | fp16 µs | dequant only µs | " + " | ".join(f"{lab} µs" for lab in labels)
             + " | best | best vs fp16 | dequant vs fp16 |", "|" + "---|" * (8 + len(labels))]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['format']} | {r['shape']} | {r['m']} | error: {r['error']} |")
            continue
        cells = " | ".join(f"{r[f'{lab}_us']:.1f}" if f"{lab}_us" in r else "–" for lab in labels)
        lines.append(f"| {r['format']} | {r['n']}×{r['k']} | {r['m']} | {r['fp16_us']:.1f} | "
                     f"{r['dequant_only_us']:.1f} | {cells} | {r['best']} | {r['fp16_us'] / r['best_us']:.2f}× | "
                     f"{r['fp16_us'] / r['dequant_us']:.2f}× |")
    return "\n".join(lines)


def _layer_table(rows, labels) -> str:
    lines = ["| format | M | fp16 µs | " + " | ".join(f"{lab} µs (× fp16)" for lab in labels)
             + " | best per shape µs (× fp16) |", "|" + "---|" * (4 + len(labels))]
    for fmt, m in sorted({(r["format"], r["m"]) for r in rows if "error" not in r}):
        rs = {r["shape"]: r for r in rows if r["format"] == fmt and r["m"] == m and "error" not in r}
        if set(rs) != set(LAYER):
            continue
        tot = lambda key: sum(LAYER[s] * rs[s].get(key, float("nan")) for s in LAYER)  # noqa: E731
        fp16 = tot("fp16_us")
        cells = " | ".join(f"{tot(f'{lab}_us'):.0f} ({fp16 / tot(f'{lab}_us'):.2f}×)" for lab in labels)
        best = tot("best_us")
        lines.append(f"| {fmt} | {m} | {fp16:.0f} | {cells} | {best:.0f} ({fp16 / best:.2f}×) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ms", default="2048")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--tiny", action="store_true", help="tiny shapes with the layer names (interpreter smoke run)")
    args = ap.parse_args()
    import qcompiler.backends.triton  # noqa: F401 - registers torch.ops.qcompiler_triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    named = TINY if args.tiny else SHAPES
    results = JsonResults("bench_weight_only_prefill.json", run_meta())
    labels: list = []
    for m in (int(v) for v in args.ms.split(",")):
        for fmt in args.formats.split(","):
            for name in args.shapes.split(","):
                n, k = named[name]
                try:
                    row, labels = _row(fmt, name, m, n, k, dev)
                except Exception as e:  # noqa: BLE001 - one failing shape must not lose the others
                    traceback.print_exc()
                    row = {"format": fmt, "shape": name, "m": m, "n": n, "k": k,
                           "error": error_line(e, 300)}
                results.add(row)
                print(_table([row], labels).splitlines()[-1], flush=True)
                if dev == "cuda":
                    torch.cuda.empty_cache()
    results.write()
    print(f"\n{results.meta['card']}, {results.meta['date']}, {results.meta['command']}")
    print(_table(results.results, labels))
    print()
    print(_layer_table(results.results, labels))


if __name__ == "__main__":
    main()
