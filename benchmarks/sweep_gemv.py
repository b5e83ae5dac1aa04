"""Sweep of the weight-only decode kernels: each variant x config x layer shape x M, GPU-only time
against the weight bytes it must read, next to fp16 cuBLAS and the card's copy bandwidth.

    PYTHONPATH=. python benchmarks/sweep_gemv.py [--ms 1,16,4,64] [--budget-s 200]

Variants (``M = 1`` unless noted):
  fp16            ``F.linear`` (cuBLAS)
  gemv-fma        ``weight_only_gemv(dot=False)``, the previous M = 1 default (its config list)
  gemv-dot-asmA   ``weight_only_gemv(dot=True)``; A = 0 codes via float32 (the previous M > 1
                  default), 1 fp16 magic numbers, 2 the same via ``prmt`` (M = 1, 4, 16)
  row-asmA        ``weight_only_gemv_row``; A = 0 Triton ops, 1 ``prmt`` (M = 1)
  i8o-before      int8-outlier's previous decode kernel (``weight_only_linear``, autotuned)
  matmul          ``weight_only_matmul`` (M = 64), int8-outlier: quantize + int8 GEMM (M = 64)
For each variant the best config is reported (all are timed the same way). Formats: w8 (per
channel), w4 (g128), nf4 (b64), int8-outlier (signed int8, per channel, 4 fp16 outlier columns).

Timing: each call on ``copies`` different weights in turn (together >= 192 MB, several times the
L2) inside one captured CUDA graph, replayed: GPU time per call, as in a CUDA-graphed decode step.
Compilation of every config runs first, in threads (Triton's AsyncCompileMode), then the timing.
JSON to $OUT/sweep_gemv.json after every row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from gemv_before import before_modules  # noqa: E402 - sibling module
from timing import graph_replay_us  # noqa: E402 - sibling module

SHAPES = {"q/o": (4096, 4096), "k/v": (1024, 4096), "gate/up": (14336, 4096), "down": (4096, 14336),
          "1.1B q/o": (2048, 2048), "1.1B k/v": (256, 2048), "1.1B gate/up": (5632, 2048),
          "1.1B down": (2048, 5632),
          # Sibling linears fused into one call (q/k/v, gate/up: the sib11 rewrite).
          "qkv fused": (6144, 4096), "gate+up fused": (28672, 4096),
          "1.1B qkv fused": (2560, 2048), "1.1B gate+up fused": (11264, 2048)}  # N, K
PRODUCTION = os.environ.get("SWEEP_GEMV_PRODUCTION", "0") == "1"  # set by --production (workers too)
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: --dry under TRITON_INTERPRET=1 only
FORMATS = ["w8", "w4", "nf4", "int8-outlier"]
ROW_TILES = [(128, 64, 4), (64, 64, 4), (256, 64, 8), (64, 64, 2), (128, 128, 4), (64, 128, 4), (32, 256, 4),
             (128, 32, 4), (256, 32, 8)]  # BLOCK_N, BLOCK_KB, warps



def _bytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def make_weight(fmt: str, n: int, k: int, seed: int):
    """-> dict(op=WeightOperand, bytes, raw tensors for the op-level calls)."""
    from qcompiler.backends.triton._weight_operand import int8_signed_operand, nf4_operand, uint_operand
    g = torch.Generator(device=DEV).manual_seed(seed)
    if fmt == "fp16":
        w = torch.randn(n, k, device=DEV, dtype=torch.float16, generator=g) * 0.02
        return dict(w=w, bytes=_bytes([w]))
    if fmt in ("w8", "w4"):
        bits = 8 if fmt == "w8" else 4
        q = torch.randint(0, 256, (n, k * bits // 8), device=DEV, dtype=torch.uint8, generator=g)
        group = k if bits == 8 else 128
        s = torch.rand(n, k // group, device=DEV, generator=g) * 1e-3 + 1e-4
        return dict(op=uint_operand(q, s, None, bits, group, k, q.device), q=q, s=s, bits=bits, group=group,
                    bytes=_bytes([q, s]))
    if fmt == "nf4":
        q = torch.randint(0, 256, (n, k // 2), device=DEV, dtype=torch.uint8, generator=g)
        a = torch.rand(n, k // 64, device=DEV, generator=g) * 0.05
        return dict(op=nf4_operand(q, a, None, None, 64, 1, k, q.device), q=q, a=a, bytes=_bytes([q, a]))
    wq = torch.randint(-127, 128, (n, k), device=DEV, dtype=torch.int8, generator=g)
    ws = torch.rand(n, device=DEV, generator=g) * 0.05 + 0.01
    idx = torch.tensor([3, 100, 1000, 2000], device=DEV) % k
    wq[:, idx] = 0
    mask = torch.zeros(k, dtype=torch.int8, device=DEV)
    mask[idx] = 1
    wo = torch.randn(n, 4, device=DEV, dtype=torch.float16, generator=g) * 0.02
    return dict(op=int8_signed_operand(wq, ws, wq.device), wq=wq, ws=ws, idx=idx, mask=mask, wo=wo,
                bytes=_bytes([wq, ws, wo]))


def _splits(n: int, kb: int, block_n: int, block_kb: int) -> list[int]:
    # Split factors giving ~2, 4 and 8 programs per SM (132 SMs), no more splits than K tiles.
    tiles = max(1, kb // block_kb)
    out = set()
    for target in (264, 528, 1056):
        s = 2 ** round(math.log2(max(1, target / max(1, -(-n // block_n)))))
        out.add(int(min(max(s, 1), tiles, 64)))
    return sorted(out)


def production_variants(fmt: str, m: int, n: int, k: int):
    """What a lowered model runs (the ops, autotuned as shipped) and, timed the same way as the
    sweep, the best of the shipped config list; M = 64 also the mixed-input GEMM with ASM=2."""
    import importlib
    G = importlib.import_module("qcompiler.backends.triton.weight_only_gemv")
    R = importlib.import_module("qcompiler.backends.triton.weight_only_gemv_row")
    ops = torch.ops.qcompiler_triton
    if fmt == "fp16":
        return [("fp16", [("cublas", lambda x, w: F.linear(x, w["w"]))])]
    i8o = fmt == "int8-outlier"
    if i8o:
        op = lambda x, w: ops.int8_outlier_linear(x, w["wq"], w["ws"], w["idx"], w["mask"], w["wo"], None)  # noqa: E731
    elif fmt == "nf4":
        op = lambda x, w: ops.weight_only_nf4_linear(x, w["q"], w["a"], None, None, None, 64, 1)  # noqa: E731
    else:
        op = lambda x, w: ops.weight_only_uint_linear(x, w["q"], w["s"], None, None, w["bits"], w["group"])  # noqa: E731
    out = [("op", [("autotuned", op)])]

    def oi(w):
        return (w["idx"], w["wo"]) if i8o else (None, None)

    def explicit(configs, call, **extra):
        res = []
        for c in configs:
            cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, **extra)
            res.append((",".join(f"{a}={b}" for a, b in cfg.items()), lambda x, w, cfg=cfg: call(x, w, cfg)))
        return res

    before_row, before_gemv = before_modules()
    if m == 1:
        out.append(("row-shipped", explicit(R._LAUNCH.autotuner.configs, lambda x, w, cfg: R.weight_only_gemv_row(
            x, w["op"], None, *oi(w), config=cfg))))
        if fmt == "w4":  # the same configs with 4-bit codes on the float32 form (no paired float16)
            out.append(("row-f32", explicit(R._LAUNCH.autotuner.configs, lambda x, w, cfg: R.weight_only_gemv_row(
                x, w["op"], None, config=cfg), HALF2=False)))
        if before_row is not None:
            out.append(("before", explicit(before_row._LAUNCH.autotuner.configs, lambda x, w, cfg: before_row.
                                           weight_only_gemv_row(x, w["op"], None, *oi(w), config=cfg))))
    elif m <= 16:
        out.append(("dot-shipped", explicit(G._LAUNCH["dot"].autotuner.configs, lambda x, w, cfg: G.weight_only_gemv(
            x, w["op"], None, *oi(w), dot=True, config=cfg))))
        if before_gemv is not None:
            out.append(("before", explicit(before_gemv._LAUNCH["dot"].autotuner.configs, lambda x, w, cfg: before_gemv.
                                           weight_only_gemv(x, w["op"], None, *oi(w), dot=True, config=cfg))))
    elif not i8o:
        gemm = [c for c in G._LAUNCH["gemm"].autotuner.configs]
        out.append(("matmul-asm2", explicit(gemm, lambda x, w, cfg: G.weight_only_matmul(x, w["op"], None, config=cfg),
                                            ASM=2)))
    return out


def variants(fmt: str, m: int, n: int, k: int):
    """-> list of (variant name, [(config label, fn(x, weight) -> y)])."""
    if PRODUCTION:
        return production_variants(fmt, m, n, k)
    import importlib
    G = importlib.import_module("qcompiler.backends.triton.weight_only_gemv")  # the module, not the function
    C = importlib.import_module("qcompiler.backends.triton.weight_only_gemv_configs")
    from qcompiler.backends.triton.weight_only_gemv_row import row_tile_ok, weight_only_gemv_row
    weight_only_linear = importlib.import_module("qcompiler.backends.triton.weight_only_linear").weight_only_linear
    ops = torch.ops.qcompiler_triton
    if fmt == "fp16":
        return [("fp16", [("cublas", lambda x, w: F.linear(x, w["w"]))])]
    out = []
    i8o = fmt == "int8-outlier"

    def oi(w):  # outlier columns for int8-outlier, none otherwise
        return (w["idx"], w["wo"]) if i8o else (None, None)

    def cfg_label(c):
        return ",".join(f"{a}={b}" for a, b in c.items())

    def gemv_cfgs(configs, asm, dot):
        res = []
        for c in configs:
            cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, ASM=asm)
            res.append((cfg_label(cfg), lambda x, w, cfg=cfg: G.weight_only_gemv(
                x, w["op"], None, *oi(w), dot=dot, config=cfg)))
        return res

    if m == 64:
        if i8o:
            out.append(("matmul", [("int8 GEMM", lambda x, w: ops.int8_outlier_linear(
                x, w["wq"], w["ws"], w["idx"], w["mask"], w["wo"], None))]))
        else:
            cfgs = []
            for c in C.gemm_configs():
                cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
                cfgs.append((cfg_label(cfg), lambda x, w, cfg=cfg: G.weight_only_matmul(x, w["op"], None, config=cfg)))
            out.append(("matmul", cfgs))
        return out
    if i8o:
        out.append(("i8o-before", [("autotuned", lambda x, w: weight_only_linear(x, w["wq"], w["ws"], w["idx"],
                                                                               w["wo"], None))]))
    if m == 1:
        if not i8o:
            out.append(("gemv-fma", gemv_cfgs(C.fma_configs(), 0, False)))
        for asm in (0, 1):
            cfgs = []
            for bn, kb, nw in ROW_TILES:
                packed = fmt in ("w4", "nf4")
                if not row_tile_ok(64 if fmt == "nf4" else 128, 2 if packed else 1, 2 if packed else 1, kb):
                    continue
                for s in _splits(n, w_kb(fmt, k), bn, kb):
                    cfg = dict(BLOCK_N=bn, BLOCK_KB=kb, SPLIT_K=s, ASM=bool(asm), num_warps=nw)
                    cfgs.append((cfg_label(cfg), lambda x, w, cfg=cfg: weight_only_gemv_row(
                        x, w["op"], None, *oi(w), config=cfg)))
            out.append((f"row-asm{asm}", cfgs))
    dots = C.dot_configs()
    for asm in ((0, 1, 2) if fmt != "nf4" else (0,)):
        subset = dots if asm == 0 else dots[:5]
        out.append((f"gemv-dot-asm{asm}", gemv_cfgs(subset, asm, True)))
    return out


def w_kb(fmt: str, k: int) -> int:
    return k if fmt in ("w8", "int8-outlier") else k // 2


def graph_time_us(fn, weights, x, reps: int) -> float:
    return graph_replay_us([lambda w=w: fn(x, w) for w in weights], reps)


def copy_tb_s() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    b = torch.empty_like(a)
    us = graph_time_us(lambda _x, _w: b.copy_(a), [None], None, reps=20)
    return 2 * a.numel() / (us * 1e-6) / 1e12


@contextmanager
def compile_only():
    """Kernel launches inside only compile (into Triton's on-disk cache)."""
    from triton.runtime.jit import JITFunction
    orig = JITFunction.__getitem__
    JITFunction.__getitem__ = lambda self, grid: (lambda *a, **k: self.run(*a, grid=grid, warmup=True, **k))
    try:
        yield
    finally:
        JITFunction.__getitem__ = orig


def _precompile_worker(jobs) -> int:
    """In a fresh process: compile each (m, shape, fmt, variant, config index) once."""
    import qcompiler.backends.triton  # noqa: F401
    made, fails = {}, 0
    with compile_only():
        for m, shape, fmt, name, i in jobs:
            n, k = SHAPES[shape]
            if (fmt, shape) not in made:
                made[fmt, shape] = make_weight(fmt, n, k, seed=0)
            cfgs = dict(variants(fmt, m, n, k))[name]
            try:
                cfgs[i][1](torch.zeros(m, k, device=DEV, dtype=torch.float16), made[fmt, shape])
            except Exception:  # noqa: BLE001 - shows up again when timed
                fails += 1
    return fails


def precompile(plan, workers: int) -> int:
    """Compile every explicit config of the plan in ``workers`` processes (one kernel compiles
    on one core; the timing process then loads them from the cache)."""
    import multiprocessing as mp
    jobs = [(m, shape, fmt, name, i) for m, shape, fmt, name, cfgs in plan
            if name not in ("fp16", "i8o-before", "op") and not (name == "matmul" and fmt == "int8-outlier")
            for i in range(len(cfgs))]
    # The same kernel recurs for every shape and M: one job per distinct (fmt, variant, config, K-class).
    seen, uniq = set(), []
    for j in jobs:
        m, shape, fmt, name, i = j
        key = (fmt, name, i, m > 1, SHAPES[shape][1] % 256 == 0)
        if key not in seen:
            seen.add(key)
            uniq.append(j)
    chunks = [uniq[w::workers] for w in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        return sum(pool.map(_precompile_worker, [c for c in chunks if c]))


def _quick_autotune() -> None:
    """The autotuned "before" rows: 3 + 10 ms of benchmark per candidate, not 25 + 100."""
    import triton.testing
    from triton.runtime.autotuner import Autotuner

    import importlib
    mods = [importlib.import_module(f"qcompiler.backends.triton.{name}") for name in (
        "int8_linear", "quantize_rowwise", "weight_only_linear", "weight_only_gemv", "weight_only_gemv_row")]
    fast = lambda fn, quantiles=None: triton.testing.do_bench(fn, warmup=3, rep=10, quantiles=quantiles)  # noqa: E731
    for mod in mods:
        for v in list(vars(mod).values()) + list(getattr(mod, "_LAUNCH", {}).values() if isinstance(
                getattr(mod, "_LAUNCH", None), dict) else []):
            at = getattr(v, "autotuner", v)
            if isinstance(at, Autotuner):
                try:
                    at.do_bench = fast
                except AttributeError:
                    pass


def dry_run() -> None:
    """Every variant's every config once, on tiny shapes (interpreter): catches typos before the GPU."""
    for m in (1, 4, 64):
        for fmt in ["fp16", *FORMATS]:
            n, k = 32, 256
            w = make_weight(fmt, n, k, seed=0)
            x = torch.randn(m, k, dtype=torch.float16)
            for name, cfgs in variants(fmt, m, n, k):
                for label, fn in cfgs[:2] + cfgs[-1:]:
                    if "ASM=True" in label or "ASM=2" in label:
                        continue  # PTX: GPU only
                    if name == "matmul" and fmt == "int8-outlier":
                        continue
                    y = fn(x, w)
                    assert y.shape == (m, n), (name, label, y.shape)
                print(f"dry ok: M={m} {fmt} {name} ({len(cfgs)} configs)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,16,4,64")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--budget-s", type=float, default=200.0)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--formats", default=",".join(FORMATS), help="a subset of " + ",".join(FORMATS))
    ap.add_argument("--production", action="store_true", help="the shipped ops and config lists")
    ap.add_argument("--dry", action="store_true", help="CPU check: each variant once on tiny shapes")
    args = ap.parse_args()
    if args.production:
        global PRODUCTION
        PRODUCTION = True
        os.environ["SWEEP_GEMV_PRODUCTION"] = "1"  # spawned precompile workers read it
    import qcompiler.backends.triton  # noqa: F401 - registers torch.ops.qcompiler_triton
    if args.dry:
        return dry_run()
    _quick_autotune()
    t0 = time.time()
    card = torch.cuda.get_device_name()
    copy0 = copy_tb_s()
    print(f"{card}: copy {copy0:.2f} TB/s (first)", flush=True)
    ms = [int(v) for v in args.ms.split(",")]
    shapes = [s for s in args.shapes.split(",") if s]
    formats = [f for f in args.formats.split(",") if f]
    # Weights: one set per (format, shape), shared by all M.
    weights = {}
    for shape in shapes:
        n, k = SHAPES[shape]
        for fmt in ["fp16", *formats]:
            one = make_weight(fmt, n, k, seed=0)
            copies = int(min(256, max(4, math.ceil((192 << 20) / one["bytes"]))))
            weights[fmt, shape] = [one] + [make_weight(fmt, n, k, seed=i) for i in range(1, copies)]
    print(f"weights made: {time.time() - t0:.0f} s", flush=True)
    plan = [(m, shape, fmt, name, cfgs) for m in ms for shape in shapes for fmt in ["fp16", *formats]
            for name, cfgs in variants(fmt, m, *SHAPES[shape])]
    try:
        fails = precompile(plan, args.workers)
        print(f"precompiled in {args.workers} processes ({fails} failed): {time.time() - t0:.0f} s", flush=True)
    except Exception as e:  # noqa: BLE001 - then the timing loop compiles serially
        print(f"precompile failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
    rows = []
    out = os.environ.get("OUT")
    for m, shape, fmt, name, cfgs in plan:
        if time.time() - t0 > args.budget_s:
            print("budget reached: stopping", flush=True)
            break
        n, k = SHAPES[shape]
        ws = weights[fmt, shape]
        x = torch.randn(m, k, device=DEV, dtype=torch.float16)
        reps = max(3, min(50, int(2000 / (len(ws) * 5))))
        best, errors, timed = None, [], {}
        for label, fn in cfgs:
            try:
                us = timed[label] = graph_time_us(fn, ws, x, reps)
            except Exception as e:  # noqa: BLE001 - report and go on
                errors.append(f"{label}: {type(e).__name__}: {str(e)[:160]}")
                continue
            if best is None or us < best[0]:
                best = (us, label)
        row = dict(m=m, shape=shape, n=n, k=k, fmt=fmt, variant=name, configs=len(cfgs), errors=errors[:3],
                   n_errors=len(errors), bytes=ws[0]["bytes"], copies=len(ws),
                   timed={a: round(b, 3) for a, b in sorted(timed.items(), key=lambda t: t[1])[:12]})
        if best is not None:
            row.update(us=best[0], config=best[1], tb_s=ws[0]["bytes"] / (best[0] * 1e-6) / 1e12)
        rows.append(row)
        print(f"M={m:2d} {shape:13s} {fmt:12s} {name:15s} " + (
            f"{row['us']:8.2f} us {row['tb_s']:.2f} TB/s  [{row['config']}]" if best else f"FAILED {errors[:1]}"),
            flush=True)
        if out:
            with open(os.path.join(out, "sweep_gemv.json"), "w") as f:
                json.dump({"card": card, "copy_tb_s_first": copy0, "rows": rows}, f, indent=1)
    copy1 = copy_tb_s()
    print(f"copy {copy1:.2f} TB/s (last); total {time.time() - t0:.0f} s", flush=True)
    if out:
        with open(os.path.join(out, "sweep_gemv.json"), "w") as f:
            json.dump({"card": card, "copy_tb_s_first": copy0, "copy_tb_s_last": copy1, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
