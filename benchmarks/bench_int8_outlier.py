"""int8 + fp16-outlier linear layers on the GPU, side by side in one run.

For each M x K x N, X (fp16) holds 8 outlier columns scaled x20, W ~ N(0, 0.02^2). Rows:

* fp16 ``F.linear`` (cuBLAS)                          - the baseline;
* bitsandbytes ``Linear8bitLt`` threshold 6.0 / 0.0   - LLM.int8() with / without decomposition;
* torchao int8 dynamic activation + int8 weight, ``torch.compile``d;
* qcompiler int8-outlier static  (``qcompiler_triton.int8_outlier_linear``: activation
  quantization + fused GEMM, or the weight-only kernel for M <= 16);
* qcompiler int8-outlier dynamic (``qcompiler_triton.int8_dynamic_outlier_linear``);
* for the profile: qcompiler's quantize kernel alone, its fused GEMM alone, ``torch._int_mm``.

Times, after a warm-up call that also runs the autotuner:
* ``ms``: median of ``triton.testing.do_bench`` (L2 flushed between calls). When the host needs
  longer to issue a call than the GPU needs to run it, this includes host launch overhead;
* ``gpu ms``: median of the same events with the GPU held back by ``torch.cuda._sleep`` before
  each call, so the host has issued the whole call before the GPU starts: GPU time only (what a
  CUDA-graph'd decode loop sees); L2 flushed as well;
* ``host us``: host time per call, issuing 200 calls back to back (all three from
  ``benchmarks/timing.py``). Error: ||y - x.float() @ w.float().T|| / ||.||. Peers are optional
(printed "n/a: reason" when missing). Full results go to ``$OUT/bench_int8_outlier.json`` when
``OUT`` is set (or ``--json``), rewritten after every shape.

    PYTHONPATH=. python benchmarks/bench_int8_outlier.py [--shapes 1x4096x4096,...] [--rep 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import torch
import torch.nn.functional as F

from timing import JsonResults, bench_ms, gpu_ms, host_us, run_meta, warm_up  # sibling module

__all__ = ["main"]

SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (2048, 4096, 4096), (4096, 4096, 11008),
          (8192, 8192, 8192)]
N_OUTLIERS, OUTLIER_SCALE, THRESHOLD = 8, 20.0, 6.0


def _problem(m, k, n, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g)
    idx = torch.randperm(k, device="cuda", generator=g)[:N_OUTLIERS].sort().values
    x[:, idx] *= OUTLIER_SCALE
    w = torch.randn(n, k, device="cuda", generator=g) * 0.02
    return x.half(), w.half(), idx


def _rel_err(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


def _make_fp16(x, w, idx):
    return lambda: F.linear(x, w)


def _make_bnb(threshold):
    def make(x, w, idx):
        import bitsandbytes as bnb
        lin = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=False, has_fp16_weights=False,
                                  threshold=threshold)
        lin.weight = bnb.nn.Int8Params(w.detach().cpu(), requires_grad=False,
                                       has_fp16_weights=False)
        lin = lin.cuda().eval()
        return lambda: lin(x)
    return make


def _make_torchao(x, w, idx):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="cuda", dtype=torch.float16)
    lin.weight.data.copy_(w)
    quantize_(lin, Int8DynamicActivationInt8WeightConfig())
    fn = torch.compile(lin)
    return lambda: fn(x)


def _static_weights(w, idx):
    from qcompiler.backends.triton import outlier_mask_from_idx
    from qcompiler.ops import quantize_weight
    w_in = w.float().clone()
    w_in[:, idx] = 0
    wq, ws = quantize_weight(w_in)
    return wq, ws, w[:, idx].contiguous(), outlier_mask_from_idx(idx, w.shape[1])


def _make_qc_static(x, w, idx):
    import qcompiler.backends.triton  # noqa: F401 - registers torch.ops.qcompiler_triton
    wq, ws, wo, mask = _static_weights(w, idx)
    op = torch.ops.qcompiler_triton.int8_outlier_linear
    return lambda: op(x, wq, ws, idx, mask, wo, None)


def _make_qc_dynamic(x, w, idx):
    import qcompiler.backends.triton  # noqa: F401
    from qcompiler.ops import quantize_weight
    wq, ws = quantize_weight(w)
    op = torch.ops.qcompiler_triton.int8_dynamic_outlier_linear
    return lambda: op(x, wq, ws, THRESHOLD, None)


def _make_qc_quant_only(x, w, idx):
    from qcompiler.backends.triton import quantize_rowwise
    _, _, _, mask = _static_weights(w, idx)
    return lambda: quantize_rowwise(x, idx, mask)


def _make_qc_gemm_only(x, w, idx):
    from qcompiler.backends.triton import int8_linear, quantize_rowwise
    wq, ws, wo, mask = _static_weights(w, idx)
    xq, xs, xo = quantize_rowwise(x, idx, mask)
    return lambda: int8_linear(xq, xs, wq, ws, xo, wo, None, torch.float16)


def _make_int_mm(x, w, idx):
    if x.shape[0] <= 16:
        raise RuntimeError("torch._int_mm needs M > 16")
    from qcompiler.ops import quantize_weight
    xq = torch.randint(-127, 128, x.shape, device="cuda", dtype=torch.int8)
    wq, _ = quantize_weight(w)
    wt = wq.t()
    return lambda: torch._int_mm(xq, wt)


METHODS = [
    ("fp16 F.linear (cuBLAS)", _make_fp16, True),
    ("bnb LLM.int8 t=6", _make_bnb(6.0), True),
    ("bnb int8 t=0", _make_bnb(0.0), True),
    ("torchao int8 dyn (compiled)", _make_torchao, True),
    ("qcompiler static", _make_qc_static, True),
    ("qcompiler dynamic", _make_qc_dynamic, True),
    ("  qc quantize only", _make_qc_quant_only, False),
    ("  qc fused GEMM only", _make_qc_gemm_only, True),
    ("  torch._int_mm", _make_int_mm, False),
]


def _best_configs():
    """The configs the autotuner picked, per kernel and key (for RESULTS.md)."""
    import qcompiler.backends.triton  # noqa: F401
    out = {}
    for mod in ("int8_linear", "weight_only_linear", "quantize_rowwise"):
        # sys.modules: the package re-exports launchers under the same names as these modules.
        launcher = sys.modules[f"qcompiler.backends.triton.{mod}"]._LAUNCH
        out[mod] = {str(key): {k: v for k, v in meta.items() if v is not None}
                    for key, meta in launcher.meta.items()}
    return out


def run(shapes, rep, methods, sink=None):
    results = []
    for (m, k, n) in shapes:
        x, w, idx = _problem(m, k, n)
        ref = x.float() @ w.float().t()
        row = {"shape": f"{m}x{k}x{n}", "M": m, "K": k, "N": n, "methods": {}}
        for name, make, check in methods:
            try:
                fn = make(x, w, idx)
                y = warm_up(fn)  # compiles and autotunes
                err = _rel_err(y if torch.is_tensor(y) else y[0], ref) if check else None
                row["methods"][name] = {"ms": bench_ms(fn, rep=rep), "rel_err": err,
                                        "gpu_ms": gpu_ms(fn), "host_us": host_us(fn)}
            except Exception as e:  # noqa: BLE001 - a missing or broken peer is reported, not fatal
                row["methods"][name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:160]}
                if os.environ.get("BENCH_TRACE"):
                    traceback.print_exc()
            print(f"  {row['shape']:>16} {name:<28} {row['methods'][name]}", flush=True)
        results.append(row)
        if sink is not None:
            sink.add(row)
        del x, w, ref
        torch.cuda.empty_cache()
    return results


def _table(results, methods) -> str:
    lines = ["| M×K×N | method | ms (do_bench median) | × fp16 | rel. err vs fp32 | GPU-only ms | × fp16 (GPU-only) | host µs/call |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results:
        base = row["methods"].get(methods[0][0], {}).get("ms")
        gbase = row["methods"].get(methods[0][0], {}).get("gpu_ms")
        for name, _, _ in methods:
            r = row["methods"][name]
            if "error" in r:
                lines.append(f"| {row['shape']} | {name.strip()} | n/a: {r['error']} | | | | | |")
                continue
            ratio = f"{base / r['ms']:.2f}×" if base else "-"
            err = f"{r['rel_err']:.4f}" if r["rel_err"] is not None else "-"
            gratio = f"{gbase / r['gpu_ms']:.2f}×" if gbase else "-"
            lines.append(f"| {row['shape']} | {name.strip()} | {r['ms']:.4f} | {ratio} | {err} | "
                         f"{r['gpu_ms']:.4f} | {gratio} | {r['host_us']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    ap.add_argument("--rep", type=int, default=200, help="do_bench repetition time, ms")
    ap.add_argument("--only", default="", help="comma-separated method-name substrings")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("n/a: this benchmark needs a CUDA GPU")
        return 1
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    methods = [mt for mt in METHODS if not args.only or any(o in mt[0] for o in args.only.split(","))]
    if methods[0][0] != METHODS[0][0]:
        methods.insert(0, METHODS[0])
    meta = run_meta(peers=("triton", "bitsandbytes", "torchao"))
    card = meta["card"]
    print(json.dumps(meta), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    sink = JsonResults("bench_int8_outlier.json", meta, path=args.json)
    results = run(shapes, args.rep, methods, sink)
    out = sink.write(configs=_best_configs())
    print(f"\n{card}, {meta['date']}, torch {meta['torch']}, triton {meta.get('triton')}")
    print(_table(results, methods))
    print("\nautotuned configs:", json.dumps(out["configs"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
