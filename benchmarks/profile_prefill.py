"""Where a prompt's time goes through ``qm.generate()``: each row's prefill, eager and compiled, and
the kernels one prompt runs (``torch.profiler``, GPU time per kernel name).

    PYTHONPATH=.:benchmarks python benchmarks/profile_prefill.py --shape 1.1b --layers 8 \
        --rows fp16-lean,qc-w4-weight-only,qc-int8-outlier --out $OUT/profile_prefill.json

Rows and model as in ``bench_generate.py`` (``generate_rows.py``). For each row and prompt mode
(``--modes``: ``eager`` = the plain forward, ``compiled`` = the fast path's compiled prompt,
never captured, ``compiled-graph`` = that, captured as a CUDA graph once the shape repeats
(``qcompiler.runtime.prompt_graph``; ``qm.generate()``'s default), ``-masked`` = without the causal prompt
attention of ``qcompiler.runtime.prompt_attention``): the
fastest of ``--reps`` prompts of ``--prefill`` tokens (``generate(max_new_tokens=1)``), and for one
prompt the wall time, the summed kernel time and the ``--top`` heaviest kernels; for a captured
prompt also the GPU time of one replay of its graph (what is left of the wall time is host work
and the eager ops around the replay).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time

import torch

from bench_generate import _generate, _timed
from generate_rows import RowContext, build, row_builder
from prefill_host_phases import host_phases
from timing import JsonResults, card_name

__all__ = ["main"]


MODES = {"eager": (False, True, 0), "compiled": (True, True, 0),  # (compiled, causal attention, prompt graphs)
         "compiled-graph": (True, True, 2), "eager-masked": (False, False, 0), "compiled-masked": (True, False, 0)}


def _set_prompt_mode(model, mode: str) -> None:
    hf = model._modules["model"] if hasattr(model, "program") else model
    loop = hf.__dict__["_qcompiler_lean_decode"]["loop"]
    compiled, causal, graphs = MODES[mode]
    loop.config = dataclasses.replace(loop.config, compiled_prefill=compiled, causal_prompt=causal,
                                      prompt_graphs=graphs)
    for slot in loop._slots.values():
        slot.prompts.limit = graphs


def _profile(model, ids, top: int, cpu_top: int = 0) -> dict:
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if cpu_top else [])) as prof:
        _generate(model, ids, 1)
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    evs = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    heavy = sorted(evs, key=lambda e: -e.self_device_time_total)[:top]
    host = {}
    if cpu_top:  # host time by op / runtime call (cudaMalloc, syncs, Python-side ops), self time
        cpu = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:cpu_top]
        host = {"top_host_ms": [(e.key[:100], round(e.self_cpu_time_total / 1e3, 3), e.count) for e in cpu]}
    return {**host, "profiled_wall_ms": wall * 1e3, "kernel_ms": sum(e.self_device_time_total for e in evs) / 1e3,
            "kernels": len(evs), "launches": sum(e.count for e in evs),
            "top_kernels_ms": [(e.key[:100], round(e.self_device_time_total / 1e3, 3), e.count) for e in heavy]}


def _graph_replay_ms(model, reps: int = 20) -> float | None:
    """GPU time of one replay of the captured prompt graph (median, CUDA events around it), or
    None when no prompt is captured: the rest of a call's wall time is host work around it."""
    hf = model._modules["model"] if hasattr(model, "program") else model
    loop = hf.__dict__["_qcompiler_lean_decode"]["loop"]
    if not any(slot.prompts.graphs for slot in loop._slots.values()):
        return None
    (slot, graph), = [(s, g.graph) for s in loop._slots.values() for g in s.prompts.graphs.values()][-1:]
    times = []
    for _ in range(reps + 1):
        slot.cache.reset()  # as every prompt does: the graph's cache positions start at the cache's length
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times[1:])[reps // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1.1b")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rows", default="fp16-lean,qc-w4-weight-only,qc-int8-outlier")
    ap.add_argument("--modes", default="eager,compiled", help=f"comma list of {', '.join(MODES)} (-masked: "
                    "masked attention over the whole static cache, what transformers does)")
    ap.add_argument("--decode-first", action="store_true",
                    help="decode 33 tokens of a 16-token prompt at batch 1 and 16 first (bench_generate.py's order)")
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--cpu-top", type=int, default=0, help="also profile the host: its N heaviest ops")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base = build(args.shape, args.layers, None, "cuda", torch.float16)
    vocab = base.config.vocab_size
    calib = [{"input_ids": torch.randint(3, vocab, (1, 128), generator=torch.Generator().manual_seed(10 + i))
              .cuda()} for i in range(2)]
    ids = torch.randint(3, vocab, (1, args.prefill), generator=torch.Generator().manual_seed(3)).cuda()
    ctx = RowContext(backend="triton", lean_step="auto", device="cuda")
    results = JsonResults("profile_prefill.json", {"card": card_name(), "args": vars(args)}, path=args.out)
    print(f"{card_name()}, torch {torch.__version__}, {args.shape} x {args.layers} layers, prompt {args.prefill}")
    for name in args.rows.split(","):
        make, overrides = row_builder(name)
        t0 = time.perf_counter()
        model = make(base, calib, dataclasses.replace(ctx, **overrides))
        row = {"build_s": time.perf_counter() - t0}
        if args.decode_first:
            t0 = time.perf_counter()
            for batch in (1, 16):
                _generate(model, torch.randint(3, vocab, (batch, 16)).cuda(), 33)
            row["decode_first_s"] = time.perf_counter() - t0
        for mode in args.modes.split(","):
            _set_prompt_mode(model, mode)
            t0 = time.perf_counter()
            for _ in range(2):  # a fresh cache's first prompt runs eager; the second compiles (and is captured)
                out = _generate(model, ids, 1)
            torch.cuda.synchronize()
            r = {"warmup_s": time.perf_counter() - t0, "next_token": int(out[0, -1])}
            t = _timed(lambda: _generate(model, ids, 1), args.reps, "cuda")
            r.update(prefill_ms=t * 1e3, prefill_tok_s=args.prefill / t, graph_replay_ms=_graph_replay_ms(model),
                     host_phases_ms=host_phases(lambda: _generate(model, ids, 1)),
                     **_profile(model, ids, args.top, args.cpu_top))
            r["graphs"] = torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)  # so far in the process
            row[mode] = r
            print(f"== {name} {mode}: {r['prefill_ms']:.2f} ms ({r['prefill_tok_s']:.0f} tok/s), token {r['next_token']}, kernels "
                  f"{r['kernel_ms']:.2f} ms in {r['launches']} launches, warm-up {r['warmup_s']:.1f} s"
                  + (f", graph replay {r['graph_replay_ms']:.2f} ms" if r["graph_replay_ms"] else ""), flush=True)
            print("   host phases (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in r["host_phases_ms"].items()))
            for key, ms, count in r["top_kernels_ms"]:
                print(f"   {ms:8.3f} ms {count:5d}x  {key}")
            for key, ms, count in r.get("top_host_ms", []):
                print(f"   host {ms:8.3f} ms {count:5d}x  {key}")
        results.add({"row": name, **row})
        del model
        gc.collect()
        torch.cuda.empty_cache()
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
