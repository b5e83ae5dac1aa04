"""End to end through Hugging Face ``generate()``: every method side by side, one run, one card.

    PYTHONPATH=.:$PYTHONPATH python benchmarks/bench_generate.py [--shape 8b|1.1b] [--layers 4] [--rows all] \
        [--out results.json]                              # resumable: rows already in the file are kept
    python benchmarks/bench_generate.py --tiny            # CPU smoke test: tiny model, eager steps

Model (``generate_rows.py``): a Llama of the named shape with random weights, fp16, ``--layers``
decoder layers (``--shape 1.1b``: TinyLlama, 22 layers in full; ``8b``: Llama-3-8B, 32); the
vocabulary is scaled with the layer count (``--vocab``, default full vocab * layers / full layers)
so that the fp16 head keeps the share of the bytes it has in the full model; 4 outlier dims.

Rows (``--rows`` takes a comma list; all by default):
  fp16-eager; fp16-compiled (transformers' generate() with a static cache + torch.compile(
  mode="reduce-overhead") for decode and torch.compile for prompts); fp16-lean (the same fp16 model
  through qcompiler's lean decode loop, :mod:`qcompiler.runtime.decode_loop`: static cache, one
  CUDA graph per decode step holding a torch.compile'd step, compiled prompt: qm.generate()'s default); torchao-int8wo / torchao-int4wo (fp16-compiled's
  recipe; int4 runs in bf16: tinygemm needs it) and torchao-int8wo-lean / torchao-int4wo-lean (the
  same models through the lean loop); bnb-int8 (LLM.int8(), t=6) / bnb-nf4 (eager);
  and qcompiler's schemes with backend="triton" through ``qm.generate()`` (the lean loop, on by
  default on CUDA): int8-outlier, w8a8-smoothquant, w8-weight-only, w4-weight-only, gptq-w4, nf4.
  A lean row named ``<row>+graph-step`` captures the uncompiled (eager) step instead, ``<row>+compiled-step``
  forces the compiled one, ``<row>+eager-prompt`` runs its prompts eagerly, ``<row>+uncaptured-prompt``
  never captures a prompt (``qcompiler.runtime.prompt_graph`` off; by default a repeating prompt shape
  is replayed as a CUDA graph) (``--lean-step`` /
  ``--lean-prefill`` set them for every lean row). The ratio columns divide by the stronger of
  fp16-compiled and fp16-lean, column by column.

Columns: decode tok/s at batch 1 and 16 (all sequences' new tokens per second:
``batch * (N - 1) / (t(N) - t(1))``, greedy, fastest of ``--reps``), GPU ms per decode step at batch 1
and 16 (kernel time from ``torch.profiler``, host gaps left out: the steadier figure), prefill tok/s at ``--prefill`` tokens
(``generate(max_new_tokens=1)``), GPU ms per prompt (that call's kernel time, profiler: the wall time
also holds the call's ~2 ms of host work), weight GiB (CUDA memory the row's model holds), logits error vs
fp16 eager (relative Frobenius norm on one 128-token batch); "eager tokens" = how many of the first
8 greedy tokens at batch 1 equal the row's own model decoded eagerly (plain forward, dynamic
cache); "path" = what ``generate()`` ran (lean loop or transformers' generate()). JSON goes to
$OUT/bench_generate.json and to ``--out`` after every row; rows already in ``--out`` are not run
again; a row that fails records its error and the run goes on. ``--budget-s`` skips rows once
that much time has passed (each skipped row says so).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import sys
import time
from dataclasses import replace
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from generate_rows import (FP16_BASELINES, ROWS, SHAPES, TINY_ROWS, RowContext, build,  # noqa: E402
                           row_builder)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable, reps: int, device: str) -> float:
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    # The fastest rep: decode tok/s is a difference t(N) - t(1), and a median of two reps is the
    # slower one, so one slow t(1) made a 16-row step look shorter than its 1-row step (RESULTS.md).
    return min(times)


def _generate(model, ids, new: int):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False)


def _kernel_us(model, ids, new: int) -> tuple[float, list]:
    """Summed GPU kernel time (us) of one ``generate()`` call and its kernels, from the profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _generate(model, ids, new)
        torch.cuda.synchronize()
    evs = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    return sum(e.self_device_time_total for e in evs), evs


def gpu_time_per_token(model, ids, new: int) -> dict:
    """GPU-only time per decode step (kernel time from the profiler, idle gaps left out: what the
    step costs once host overhead is hidden), and the kernels that take it."""
    t_n, evs = _kernel_us(model, ids, new)
    t_1, _ = _kernel_us(model, ids, 1)
    top = sorted(evs, key=lambda e: -e.self_device_time_total)[:8]
    return {"gpu_ms_per_token": (t_n - t_1) / (new - 1) / 1e3,
            "top_kernels_us_per_token": [(e.key[:90], round(e.self_device_time_total / new, 2), e.count)
                                         for e in top]}


@torch.no_grad()
def eager_greedy(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    """``new`` greedy tokens of ``model`` decoded eagerly - its plain forward, a dynamic cache, no
    fast path - to check what the row's ``generate()`` returns."""
    from transformers import DynamicCache
    hf = model._modules["model"] if hasattr(model, "program") else model
    fwd = hf.forward.__wrapped__ if getattr(hf.forward, "qcompiler_prompt_dispatch", False) else hf.forward
    cache = DynamicCache(config=hf.config)
    key = "cache" if "cache" in inspect.signature(fwd).parameters else "past_key_values"
    tokens, step = [], ids
    for _ in range(new):
        logits = fwd(input_ids=step, use_cache=True, **{key: cache}).logits[:, -1].float()
        step = logits.argmax(-1, keepdim=True)
        tokens.append(step)
    return torch.cat(tokens, dim=1)


def _path(model) -> str:
    from qcompiler.runtime import fast_generate_status, generate_path
    path = generate_path(model)
    if path is not None:
        return path
    return "transformers generate() (fast path)" if fast_generate_status(model) else "transformers generate() (eager)"


@torch.no_grad()
def measure(model, args, ref_logits: torch.Tensor | None, probe: torch.Tensor,
            on_progress: Callable[[dict], None] = lambda partial: None) -> dict:
    """The row's columns; ``on_progress`` gets the columns so far after each batch size (a row
    cut off by a time limit keeps what it measured)."""
    dev, out = args.device, {}
    logits = model(input_ids=probe).logits.float()
    out["logits_rel_err"] = 0.0 if ref_logits is None else float((logits - ref_logits).norm() / ref_logits.norm())
    g = torch.Generator().manual_seed(3)
    vocab = int(probe.max()) + 1
    for batch in args.batches:
        ids = torch.randint(3, vocab, (batch, args.prompt), generator=g).to(dev)
        t0 = time.perf_counter()
        warm = _generate(model, ids, args.decode)  # warm-up: compiles / captures this batch size
        _generate(model, ids, 1)
        out[f"warmup_b{batch}_s"] = time.perf_counter() - t0
        if batch == args.batches[0]:  # the row's tokens against its own model decoded eagerly
            k = min(8, args.decode)
            same = (warm[:1, args.prompt:args.prompt + k] == eager_greedy(model, ids[:1], k)).int()
            out["eager_tokens_equal"] = f"{int(same.cumprod(1).sum())}/{k}"  # leading tokens that agree
        t_n = _timed(lambda: _generate(model, ids, args.decode), args.reps, dev)
        t_1 = _timed(lambda: _generate(model, ids, 1), args.reps, dev)
        out[f"decode_b{batch}_tok_s"] = batch * (args.decode - 1) / max(t_n - t_1, 1e-9)
        out[f"decode_b{batch}_step_ms"] = (t_n - t_1) / (args.decode - 1) * 1e3
        if dev == "cuda":
            try:
                gpu = gpu_time_per_token(model, ids, args.decode)
                if batch == 1:
                    out.update(gpu)
                out[f"gpu_ms_per_step_b{batch}"] = gpu["gpu_ms_per_token"]  # a step = batch new tokens
            except Exception as e:  # noqa: BLE001 - the profile is extra; the row stands without it
                out["gpu_profile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        on_progress(out)
    if args.prefill:
        ids = torch.randint(3, vocab, (1, args.prefill), generator=g).to(dev)
        t0 = time.perf_counter()
        for _ in range(2):  # a fresh cache's first prompt runs eager; the second compiles (lean loop, HF fast path)
            _generate(model, ids, 1)
        out["warmup_prefill_s"] = time.perf_counter() - t0
        t = _timed(lambda: _generate(model, ids, 1), args.reps, dev)
        out["prefill_tok_s"] = args.prefill / t
        if dev == "cuda":  # the prompt's kernels alone: its wall time above also holds the call's host work
            try:
                out["prefill_gpu_ms"] = _kernel_us(model, ids, 1)[0] / 1e3
            except Exception as e:  # noqa: BLE001 - the profile is extra; the row stands without it
                out["prefill_gpu_profile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    out["path"] = _path(model)
    return out


def _weight_gib(device: str, before: int) -> float:
    if device != "cuda":
        return float("nan")
    gc.collect()
    torch.cuda.synchronize()
    return (torch.cuda.memory_allocated() - before) / 2 ** 30


_HIGHER = ("decode_b1_tok_s", "decode_b16_tok_s", "prefill_tok_s")
_LOWER = ("gpu_ms_per_token", "gpu_ms_per_step_b16", "prefill_gpu_ms")  # GPU time: smaller is better


def strongest_fp16(results: dict) -> dict:
    """Per column, the better of the fp16 baselines (fp16-compiled, fp16-lean) and which row it is."""
    best = {}
    rows = [(n, r) for n, r in results.items() if n.split("+")[0] in FP16_BASELINES and "error" not in r
            and "skipped" not in r]
    for key in _HIGHER + _LOWER:
        vals = [(r[key], n) for n, r in rows if r.get(key)]
        if vals:
            best[key] = (min if key in _LOWER else max)(vals)
    return best


def _table(results: dict, card: str) -> str:
    base = strongest_fp16(results)
    lines = [f"| method ({card}) | path | decode b1 tok/s | ×fp16 | GPU ms/token b1 | ×fp16 | decode b16 tok/s | ×fp16 "
             "| GPU ms/step b16 | ×fp16 | prefill tok/s | ×fp16 | GPU ms/prompt | ×fp16 | weight GiB | logits err "
             "| eager tokens |",
             "|---" * 17 + "|"]

    def cell(r, key):
        v = r.get(key)
        if v is None:
            return "–", ""
        b = base.get(key, (None,))[0]
        ratio = (b / v if key in _LOWER else v / b) if b else None
        return (f"{v:.3f}" if key in _LOWER else f"{v:.0f}"), (f"{ratio:.2f}" if ratio else "")

    for name, r in results.items():
        if "error" in r or "skipped" in r:  # (an "incomplete" row shows what it measured)
            lines.append(f"| {name} | {r.get('error', r.get('skipped'))[:100]} |" + " |" * 15)
            continue
        path = r.get("path", "").replace("transformers generate()", "HF generate()").split(":")[0]
        cells = [c for key in ("decode_b1_tok_s", "gpu_ms_per_token", "decode_b16_tok_s", "gpu_ms_per_step_b16",
                               "prefill_tok_s", "prefill_gpu_ms") for c in cell(r, key)]
        lines.append(f"| {name} | {path} | " + " | ".join(cells) + f" | {r.get('weight_gib', float('nan')):.2f} "
                     f"| {r.get('logits_rel_err', float('nan')):.4f} | {r.get('eager_tokens_equal', '–')} |")
    lines.append("ratios: to the stronger fp16 row per column (" + ", ".join(f"{k}: {n}" for k, (_, n) in base.items())
                 + ")")
    return "\n".join(lines)


def _save(path: str, meta: dict, results: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**meta, "results": results}, f, indent=2)
    os.replace(tmp, path)  # a run killed mid-write keeps the previous file


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--rows", default="all", help=f"comma list of {', '.join(ROWS)} (lean rows: +graph-step, +compiled-step, +eager-prompt, +uncaptured-prompt)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--decode", type=int, default=33, help="new tokens per timed generate")
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=540.0, help="start no row after this many seconds")
    ap.add_argument("--lean-step", default="auto", choices=["auto", "cuda-graph", "compiled-cuda-graph", "eager"])
    ap.add_argument("--lean-prefill", default="auto", choices=["auto", "eager", "compiled"],
                    help="the lean loop's prompts: auto = compiled on CUDA (qm.generate()'s default)")
    ap.add_argument("--hf-compile-prefill", type=int, default=1, help="0: HF-compiled rows run prompts eager")
    ap.add_argument("--out", default=None, help="results JSON, written after every row; rows in it are kept")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, eager backend")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b]
    if args.tiny:
        args.shape, args.layers, args.prefill, args.decode, args.reps = "tiny", 2, 32, 5, 1
        args.batches = [1, 2]
    args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    return args


def main() -> None:
    args = _parse()
    names = (TINY_ROWS if args.tiny else list(ROWS)) if args.rows == "all" else args.rows.split(",")
    for n in names:
        try:
            row_builder(n)
        except KeyError:
            raise SystemExit(f"unknown row {n!r}; known: {', '.join(ROWS)} (lean rows also with +graph-step, +compiled-step, +eager-prompt, +uncaptured-prompt)")
    ctx0 = RowContext(backend="triton" if args.device == "cuda" else "eager", lean_step=args.lean_step,
                      lean_prefill=args.lean_prefill, device=args.device, hf_compile_prefill=bool(args.hf_compile_prefill))

    start = time.perf_counter()
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    base_mem = torch.cuda.memory_allocated() if args.device == "cuda" else 0
    base = build(args.shape, args.layers, args.vocab, args.device, dtype)
    fp16_gib = _weight_gib(args.device, base_mem)
    vocab = base.config.vocab_size
    probe = torch.randint(3, vocab, (1, 128), generator=torch.Generator().manual_seed(2)).to(args.device)
    calib = [{"input_ids": torch.randint(3, vocab, (1, 128), generator=torch.Generator().manual_seed(10 + i))
              .to(args.device)} for i in range(2)]
    with torch.no_grad():
        ref_logits = base(input_ids=probe).logits.float()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    meta = {"card": card, "torch": torch.__version__, "args": {k: v for k, v in vars(args).items()},
            "params": sum(p.numel() for p in base.parameters()), "vocab": vocab, "date": date}
    print(f"{card}, torch {torch.__version__}, {args.shape} shape, {args.layers} layers, vocab {vocab}, "
          f"{meta['params'] / 1e9:.2f}B params", flush=True)
    results: dict[str, dict] = {}
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            earlier = json.load(f)
        same = {k: earlier.get("args", {}).get(k, getattr(args, k)) == getattr(args, k) for k in ("shape", "layers")}
        if not all(same.values()):
            raise SystemExit(f"{args.out} holds rows of another model ({earlier['args']}): use one --out per shape")
        kept = earlier.get("results", {})
        results = {n: r for n, r in kept.items() if not {"error", "skipped", "incomplete"} & set(r)}
        print(f"kept from {args.out}: {', '.join(results) or 'nothing'}", flush=True)
    out_paths = ([os.path.join(os.environ["OUT"], "bench_generate.json")] if os.environ.get("OUT") else []) + \
        ([args.out] if args.out else [])
    for name in names:
        if name in results:
            continue
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            results[name] = {"skipped": f"skipped: {elapsed:.0f} s of the {args.budget_s:.0f} s budget used"}
            continue
        print(f"== {name} ({elapsed:.0f} s)", flush=True)
        t0 = time.perf_counter()
        before = 0
        if args.device == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
        model = None
        torch._dynamo.utils.counters.clear()
        make, overrides = row_builder(name)
        try:
            model = make(base, calib, replace(ctx0, **overrides))
            r = {"card": card, "date": date, "build_s": time.perf_counter() - t0}
            r["weight_gib"] = fp16_gib if model is base else _weight_gib(args.device, before)

            def progress(partial: dict, name=name, r=r) -> None:
                for path in out_paths:
                    _save(path, meta, {**results, name: {**r, **partial, "incomplete": "cut off after this"}})
            r.update(measure(model, args, None if name == "fp16-eager" else ref_logits, probe, progress))
            r["row_s"] = time.perf_counter() - t0
            counters = torch._dynamo.utils.counters
            r["graph_breaks"] = sum(counters["graph_break"].values())
            r["graphs"] = counters["stats"].get("unique_graphs", 0)
            r["cudagraph_skips"] = counters["inductor"].get("cudagraph_skips", 0)
            results[name] = r
        except Exception as e:  # noqa: BLE001 - a benchmark reports what failed and goes on
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
        print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in results[name].items()}, flush=True)
        if model is not base:
            del model
        torch._dynamo.reset()
        for path in out_paths:
            _save(path, meta, results)
    print()
    print(_table(results, card))


if __name__ == "__main__":
    main()
