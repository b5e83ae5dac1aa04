"""Weight-only linear layers on the GPU, side by side in one run: qcompiler's Triton kernels (int8,
int4, NF4) vs fp16 cuBLAS, bitsandbytes NF4 and torchao int4.

For each M x K x N: X fp16 ~ N(0, 1), W ~ N(0, 0.02^2), no bias. Rows:

* fp16 ``F.linear`` (cuBLAS)                         - the baseline;
* bitsandbytes ``Linear4bit(quant_type="nf4")``      - the peer (gemv_4bit for one row), with and
  without its double quantization (``compress_statistics``);
* torchao int4 weight-only (group 128, tinygemm; bf16 X) - optional, "n/a: reason" if it fails;
* qcompiler ``qcompiler_triton.weight_only_uint_linear`` int8 (per channel) / int4 g128
  (symmetric, asymmetric) and ``weight_only_nf4_linear`` b64 (+ double quant): split-K GEMV for
  M <= 16, the same kernel tiled over M (mixed-input GEMM) up to 256 rows, dequantize + cuBLAS above;
* profile rows: the int4 GEMV in its tensor-core form at M = 1 (``dot=True``); for M > 16 both
  large-M paths forced (mixed-input GEMM, dequantize + cuBLAS) and the dequantize kernel alone; the
  older ``weight_only_int8_linear`` (int8 W, 128 programs) for M <= 16.

Times after a warm-up call (which also autotunes): ``ms`` = median of ``triton.testing.do_bench``
(L2 flushed between calls); ``gpu ms`` = the same with the GPU held back by ``torch.cuda._sleep``
so the whole call is queued first (GPU time only, as in a CUDA graph); ``host us`` = host time per
call over 200 calls (all from ``benchmarks/timing.py``). Error: ||y - x.float() @ w.float().T|| / ||.||.
Full results go to ``$OUT/bench_weight_only.json`` when ``OUT`` is set (or ``--json``), rewritten
after every shape; a Markdown table is printed.

    PYTHONPATH=. python benchmarks/bench_weight_only.py [--quick] [--shapes 1x4096x4096,...]
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/bench_weight_only.py --tiny   # CPU smoke run
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

# The issue's five shapes, plus M = 128: where the mixed-input GEMM and dequantize + cuBLAS meet.
SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (2048, 4096, 4096), (1, 4096, 11008), (16, 4096, 11008),
          (128, 4096, 4096)]
QUICK = [(1, 4096, 4096), (16, 4096, 4096), (2048, 4096, 4096)]
TINY = [(1, 256, 192), (5, 256, 200), (40, 256, 136)]  # odd N on purpose; runs in the interpreter
GROUP, BLOCK = 128, 64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _problem(m, k, n, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(m, k, device=DEVICE, generator=g)
    w = torch.randn(n, k, device=DEVICE, generator=g) * 0.02
    return x.half(), w.half()


def _rel_err(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


# --- methods: make(x, w) -> fn; fn() -> y -----------------------------------------------------

def _fp16(x, w):
    return lambda: F.linear(x, w)


def _bnb_nf4(double_quant):
    def make(x, w):
        import bitsandbytes as bnb
        lin = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=False, compute_dtype=torch.float16,
                                compress_statistics=double_quant, quant_type="nf4")
        lin.weight = bnb.nn.Params4bit(w.detach().cpu(), requires_grad=False,
                                       compress_statistics=double_quant, quant_type="nf4")
        lin = lin.cuda().eval()
        return lambda: lin(x)
    return make


def _torchao_int4(x, w):
    from torchao.quantization import Int4WeightOnlyConfig, quantize_
    errors = []
    for kwargs in (dict(group_size=GROUP, int4_packing_format="tile_packed_to_4d"), dict(group_size=GROUP),
                   dict(group_size=GROUP, version=1)):
        try:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=DEVICE, dtype=torch.bfloat16)
            lin.weight.data.copy_(w)
            quantize_(lin, Int4WeightOnlyConfig(**kwargs))
            xb = x.bfloat16()
            lin(xb)
            return lambda: lin(xb)
        except Exception as e:  # noqa: BLE001 - try the next packing, report all if none runs
            errors.append(f"{kwargs}: {type(e).__name__}: {e}".splitlines()[0][:120])
    raise RuntimeError("; ".join(errors))


def _uint(bits, group, symmetric):
    def make(x, w):
        from qcompiler.quant import quantize_uint
        from qcompiler.quant.packing import pack_int4
        import qcompiler.backends.triton  # noqa: F401 - registers torch.ops.qcompiler_triton
        q = quantize_uint(w.float(), bits, group, symmetric)
        qw = pack_int4(q.codes) if bits == 4 else q.codes
        op = torch.ops.qcompiler_triton.weight_only_uint_linear
        return lambda: op(x, qw, q.scales, q.zeros, None, bits, q.group_size)
    return make


def _nf4_tensors(w, double_quant):
    from qcompiler.quant.nf4 import DOUBLE_QUANT_BLOCK, double_quantize, quantize_nf4
    from qcompiler.quant.packing import pack_int4
    codes, absmax, b = quantize_nf4(w.float(), BLOCK)
    if double_quant:
        aq, a2, off = double_quantize(absmax)
        return pack_int4(codes), aq, a2, off, b, DOUBLE_QUANT_BLOCK
    return pack_int4(codes), absmax, None, None, b, 1


def _nf4(double_quant):
    def make(x, w):
        import qcompiler.backends.triton  # noqa: F401
        qw, a, a2, off, b, dqb = _nf4_tensors(w, double_quant)
        op = torch.ops.qcompiler_triton.weight_only_nf4_linear
        return lambda: op(x, qw, a, a2, off, None, b, dqb)
    return make


def _int4_operand(w):
    from qcompiler.backends.triton._weight_operand import uint_operand
    from qcompiler.quant import quantize_uint
    from qcompiler.quant.packing import pack_int4
    q = quantize_uint(w.float(), 4, GROUP, True)
    return uint_operand(pack_int4(q.codes), q.scales, None, 4, q.group_size, w.shape[1], w.device)


def _int4_gemv_dot(x, w):
    if x.shape[0] != 1:
        raise RuntimeError("profile row for M = 1 only")
    from qcompiler.backends.triton import weight_only_gemv
    op = _int4_operand(w)
    return lambda: weight_only_gemv(x, op, None, dot=True)


def _int4_mixed_gemm(x, w):
    if x.shape[0] <= 16:
        raise RuntimeError("profile row for M > 16 only")
    from qcompiler.backends.triton import weight_only_matmul
    op = _int4_operand(w)
    return lambda: weight_only_matmul(x, op, None)


def _int4_dequant_cublas(x, w):
    if x.shape[0] <= 16:
        raise RuntimeError("profile row for M > 16 only")
    from qcompiler.backends.triton import dequantize_weight
    op = _int4_operand(w)
    return lambda: F.linear(x, dequantize_weight(op, x.dtype))


def _int4_dequant_only(x, w):
    if x.shape[0] <= 16:
        raise RuntimeError("profile row for M > 16 only")
    from qcompiler.backends.triton import dequantize_weight
    op = _int4_operand(w)
    return lambda: dequantize_weight(op, x.dtype)


def _old_int8(x, w):
    if x.shape[0] > 16:
        raise RuntimeError("weight_only_int8_linear takes M <= 16")
    import qcompiler.backends.triton  # noqa: F401
    from qcompiler.ops import quantize_weight
    wq, ws = quantize_weight(w.float())
    op = torch.ops.qcompiler_triton.weight_only_int8_linear
    return lambda: op(x, wq, ws, None, None, None)


METHODS = [  # (name, make, check error)
    ("fp16 F.linear (cuBLAS)", _fp16, True),
    ("bnb nf4 (Linear4bit)", _bnb_nf4(False), True),
    ("bnb nf4 +dq (Linear4bit)", _bnb_nf4(True), True),
    ("torchao int4 wo g128 (bf16)", _torchao_int4, True),
    ("qc int8 wo (per channel)", _uint(8, 0, True), True),
    ("qc int4 wo g128", _uint(4, GROUP, True), True),
    ("qc int4 wo g128 asym", _uint(4, GROUP, False), True),
    ("qc nf4 b64", _nf4(False), True),
    ("qc nf4 b64 +dq", _nf4(True), True),
    ("  qc int4 GEMV, tl.dot form", _int4_gemv_dot, True),
    ("  qc int4 mixed GEMM (forced)", _int4_mixed_gemm, True),
    ("  qc int4 dequant+cuBLAS (forced)", _int4_dequant_cublas, True),
    ("  qc int4 dequantize only", _int4_dequant_only, False),
    ("  qc old weight_only_int8_linear", _old_int8, True),
]


def run(shapes, rep, methods, profile=True, sink=None):
    results = []
    for (m, k, n) in shapes:
        x, w = _problem(m, k, n)
        ref = x.float() @ w.float().t()
        row = {"shape": f"{m}x{k}x{n}", "M": m, "K": k, "N": n, "methods": {}}
        for name, make, check in methods:
            try:
                fn = make(x, w)
                y = warm_up(fn)  # compiles and autotunes
                err = _rel_err(y, ref) if check else None
                r = {"ms": bench_ms(fn, rep=rep), "rel_err": err}
                if profile:
                    r.update(gpu_ms=gpu_ms(fn), host_us=host_us(fn))
                row["methods"][name] = r
            except Exception as e:  # noqa: BLE001 - a missing or broken peer is reported, not fatal
                row["methods"][name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:160]}
                if os.environ.get("BENCH_TRACE"):
                    traceback.print_exc()
            print(f"  {row['shape']:>16} {name:<34} {row['methods'][name]}", flush=True)
        results.append(row)
        if sink is not None:
            sink.add(row)
        del x, w, ref
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return results


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _table(results, methods) -> str:
    lines = ["| M×K×N | method | ms (do_bench median) | × fp16 | rel. err vs fp32 | GPU-only ms | "
             "× fp16 (GPU-only) | host µs/call |", "|---|---|---|---|---|---|---|---|"]
    for row in results:
        base = row["methods"].get(methods[0][0], {})
        for name, _, _ in methods:
            r = row["methods"][name]
            if "error" in r:
                lines.append(f"| {row['shape']} | {name.strip()} | n/a: {r['error']} | | | | | |")
                continue
            ratio = f"{base['ms'] / r['ms']:.2f}×" if base.get("ms") else "-"
            g = r.get("gpu_ms")
            gratio = f"{base['gpu_ms'] / g:.2f}×" if g and base.get("gpu_ms") else "-"
            lines.append(f"| {row['shape']} | {name.strip()} | {r['ms']:.4f} | {ratio} | "
                         f"{_fmt(r['rel_err'], '.4f')} | {_fmt(g, '.4f')} | {gratio} | "
                         f"{_fmt(r.get('host_us'), '.0f')} |")
    return "\n".join(lines)


def _goals(results) -> str:
    """Issue #5's goals at M <= 16: int4 >= 2.5x and int8 >= 1.6x fp16; bnb NF4 as the peer."""
    lines = ["| M×K×N | qc int4 g128 × fp16 (goal 2.5×) | qc int8 × fp16 (goal 1.6×) | "
             "qc nf4 vs bnb nf4 (ms) | qc nf4 +dq vs bnb nf4 +dq (ms) |", "|---|---|---|---|---|"]
    for row in results:
        r = row["methods"]
        base = r.get(METHODS[0][0], {}).get("ms")

        def x(name, goal=None):
            ms = r.get(name, {}).get("ms")
            if not (base and ms):
                return "n/a"
            s = f"{base / ms:.2f}×"
            return s + ("" if goal is None or row["M"] > 16 else (" met" if base / ms >= goal else " missed"))

        def vs(a, b):
            ma, mb = r.get(a, {}).get("ms"), r.get(b, {}).get("ms")
            return f"{ma:.4f} vs {mb:.4f}" if ma and mb else "n/a"
        lines.append(f"| {row['shape']} | {x('qc int4 wo g128', 2.5)} | {x('qc int8 wo (per channel)', 1.6)} | "
                     f"{vs('qc nf4 b64', 'bnb nf4 (Linear4bit)')} | "
                     f"{vs('qc nf4 b64 +dq', 'bnb nf4 +dq (Linear4bit)')} |")
    return "\n".join(lines)


def _best_configs():
    """The configs the autotuner picked, per kernel and key (for RESULTS.md)."""
    mods = {"gemv_fma": ("weight_only_gemv", "fma"), "gemv_dot": ("weight_only_gemv", "dot"),
            "mixed_gemm": ("weight_only_gemv", "gemm"), "dequantize_weight": ("dequantize_weight", None)}
    out = {}
    for label, (mod, sel) in mods.items():
        # sys.modules: the package re-exports launchers under the same names as these modules.
        launcher = sys.modules[f"qcompiler.backends.triton.{mod}"]._LAUNCH
        launcher = launcher[sel] if sel is not None else launcher
        out[label] = {str(key): {k: v for k, v in meta.items() if v is not None}
                      for key, meta in launcher.meta.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=None, help="comma-separated MxKxN (default: the issue's five)")
    ap.add_argument("--quick", action="store_true", help="three shapes, shorter timing, no profile columns")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: a CPU smoke run under TRITON_INTERPRET=1")
    ap.add_argument("--rep", type=int, default=None, help="do_bench repetition time, ms (default 100; quick 40)")
    ap.add_argument("--only", default="", help="comma-separated method-name substrings")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if DEVICE != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        print("n/a: this benchmark needs a CUDA GPU (or TRITON_INTERPRET=1 with --tiny for a CPU smoke run)")
        return 1
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    else:
        shapes = TINY if args.tiny else QUICK if args.quick else SHAPES
    rep = args.rep or (40 if args.quick else 100)
    methods = [mt for mt in METHODS if not args.only or any(o in mt[0] for o in args.only.split(","))]
    if methods[0][0] != METHODS[0][0]:
        methods.insert(0, METHODS[0])
    meta = run_meta(peers=("triton", "bitsandbytes", "torchao"),
                    autotune=os.environ.get("QCOMPILER_TRITON_AUTOTUNE", "1"))
    card = meta["card"]
    print(json.dumps(meta), flush=True)
    if DEVICE == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    sink = JsonResults("bench_weight_only.json", meta, path=args.json)
    results = run(shapes, rep, methods, profile=not args.quick, sink=sink)
    out = sink.write(configs=_best_configs())
    print(f"\n{card}, {meta['date']}, torch {meta['torch']}, triton {meta.get('triton')}")
    print(_table(results, methods))
    print("\nGoals (M <= 16):")
    print(_goals(results))
    print("\nautotuned configs:", json.dumps(out["configs"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
