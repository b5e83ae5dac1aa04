"""End to end through Hugging Face ``generate()``: every method side by side, one run, one card.

    PYTHONPATH=.:$PYTHONPATH python benchmarks/bench_generate.py [--shape 8b|1.1b] [--layers 4] [--rows all]
    python benchmarks/bench_generate.py --tiny            # CPU smoke test: tiny model, eager rows only

Model: a Llama of the named shape with random weights (std 0.01), fp16, ``--layers`` decoder
layers; the vocabulary is scaled with the layer count (``--vocab``, default 128256 * layers / 32)
so that the fp16 head keeps the share of the bytes it has in the full 32-layer model. Four hidden
dims are multiplied by 20 in every RMSNorm weight, so q/k/v/gate/up inputs carry 4 outlier
columns, as real LLMs' residual streams do (``/work/shared/FINDINGS.md``).

Rows (``--rows`` takes a comma list; all by default):
  fp16-eager, fp16-compiled (static cache + torch.compile(mode="reduce-overhead"): the strongest
  fp16), torchao-int8wo / torchao-int4wo (same compile; int4 runs in bf16: tinygemm needs it),
  bnb-int8 (LLM.int8(), t=6) / bnb-nf4 (eager), and qcompiler's schemes with backend="triton"
  (their fast generate path, on by default on CUDA): int8-outlier, w8a8-smoothquant,
  w8-weight-only, w4-weight-only, gptq-w4, nf4.
"compiled" rows all use :func:`qcompiler.runtime.enable_fast_generate` - the same recipe (static
KV cache, decode through transformers' auto-compile with mode="reduce-overhead", prompts through
torch.compile) for fp16, torchao and qcompiler alike.

Columns: decode tok/s at batch 1 and 16 (all sequences' new tokens per second:
``batch * (N - 1) / (t(N) - t(1))``, greedy), prefill tok/s at ``--prefill`` tokens
(``generate(max_new_tokens=1)``), weight GiB (CUDA memory the row's model holds), logits error vs
fp16 eager (relative Frobenius norm on one 128-token batch). JSON goes to $OUT/bench_generate.json
after every row; a row that fails records its error and the run goes on. ``--budget-s`` skips
rows once that much time has passed (each skipped row says so).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SHAPES = {  # hidden, MLP, heads, KV heads, full-model layers, vocab
    "8b": (4096, 14336, 32, 8, 32, 128256),
    "1.1b": (2048, 5632, 32, 4, 22, 32000),
    "tiny": (64, 128, 4, 2, 2, 256),
}
OUTLIER_DIMS, OUTLIER_SCALE = 4, 20.0


def build(shape: str, layers: int, vocab: int | None, device: str, dtype: torch.dtype) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    hidden, mlp, heads, kv, full, full_vocab = SHAPES[shape]
    vocab = vocab or max(256, round(full_vocab * layers / full / 256) * 256)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      initializer_range=0.01, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    dims = torch.randperm(hidden, generator=torch.Generator().manual_seed(1))[:OUTLIER_DIMS]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p[dims.to(p.device)] *= OUTLIER_SCALE
    model.generation_config.pad_token_id = 2
    return model.to(dtype).eval()


def _swap_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and name != "lm_head":
                setattr(mod, name, make(child))
    return model


def to_bnb_int8(model: nn.Module) -> nn.Module:
    import bitsandbytes as bnb

    def make(lin: nn.Linear) -> nn.Module:
        new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                  has_fp16_weights=False, threshold=6.0)
        new.weight = bnb.nn.Int8Params(lin.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
        return new.to(lin.weight.device)
    return _swap_linears(model, make)


def to_bnb_nf4(model: nn.Module) -> nn.Module:
    import bitsandbytes as bnb

    def make(lin: nn.Linear) -> nn.Module:
        new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                compute_dtype=torch.float16, quant_type="nf4")
        new.weight = bnb.nn.Params4bit(lin.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        return new.to(lin.weight.device)
    return _swap_linears(model, make)


def to_torchao(model: nn.Module, bits: int) -> nn.Module:
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    if bits == 8:
        quantize_(model, Int8WeightOnlyConfig())
    else:  # tinygemm (torch._weight_int4pack_mm) layout: bf16 activations
        from torchao.quantization.quantize_.workflows import Int4PackingFormat
        model = model.to(torch.bfloat16)
        quantize_(model, Int4WeightOnlyConfig(group_size=128, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D))
    return model


def fast(model: nn.Module) -> nn.Module:
    from qcompiler.runtime import enable_fast_generate
    print("   ", enable_fast_generate(model), flush=True)
    return model


def qcompiled(scheme: str):
    def make(base: nn.Module, calib: list, backend: str) -> nn.Module:
        import qcompiler
        return qcompiler.compile(base, scheme, calib, backend=backend, progress=False)
    return make


# In priority order: with --rows all, a run that reaches --budget-s skips the rest.
ROWS: dict[str, Callable] = {
    "fp16-compiled": lambda base, calib, be: fast(copy.deepcopy(base)),
    "qc-w4-weight-only": qcompiled("w4-weight-only"),
    "qc-int8-outlier": qcompiled("int8-outlier"),
    "qc-w8-weight-only": qcompiled("w8-weight-only"),
    "qc-nf4": qcompiled("nf4"),
    "fp16-eager": lambda base, calib, be: base,
    "torchao-int8wo": lambda base, calib, be: fast(to_torchao(copy.deepcopy(base), 8)),
    "torchao-int4wo": lambda base, calib, be: fast(to_torchao(copy.deepcopy(base), 4)),
    "bnb-nf4": lambda base, calib, be: to_bnb_nf4(copy.deepcopy(base)),
    "bnb-int8": lambda base, calib, be: to_bnb_int8(copy.deepcopy(base)),
    "qc-gptq-w4": qcompiled("gptq-w4"),
    "qc-w8a8-smoothquant": qcompiled("w8a8-smoothquant"),
}
TINY_ROWS = ["fp16-eager", "qc-w4-weight-only", "qc-w8-weight-only", "qc-int8-outlier", "qc-nf4", "qc-gptq-w4",
             "qc-w8a8-smoothquant"]


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
    return sorted(times)[len(times) // 2]


def _generate(model, ids, new: int):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False)


def gpu_time_per_token(model, ids, new: int) -> dict:
    """GPU-only time per decode step (kernel time from the profiler, idle gaps left out: what the
    step costs once host overhead is hidden), and the kernels that take it."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(n):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            _generate(model, ids, n)
            torch.cuda.synchronize()
        evs = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
        return sum(e.self_device_time_total for e in evs), evs

    t_n, evs = kernels(new)
    t_1, _ = kernels(1)
    top = sorted(evs, key=lambda e: -e.self_device_time_total)[:8]
    return {"gpu_ms_per_token": (t_n - t_1) / (new - 1) / 1e3,
            "top_kernels_us_per_token": [(e.key[:90], round(e.self_device_time_total / new, 2), e.count)
                                         for e in top]}


@torch.no_grad()
def measure(model, args, ref_logits: torch.Tensor | None, probe: torch.Tensor) -> dict:
    dev, out = args.device, {}
    logits = model(input_ids=probe).logits.float()
    out["logits_rel_err"] = 0.0 if ref_logits is None else float((logits - ref_logits).norm() / ref_logits.norm())
    out["logits"] = logits
    g = torch.Generator().manual_seed(3)
    vocab = probe.max().item() + 1
    for batch in args.batches:
        ids = torch.randint(3, int(vocab), (batch, args.prompt), generator=g).to(dev)
        t0 = time.perf_counter()
        _generate(model, ids, args.decode)  # warm-up: compiles / captures this batch size
        _generate(model, ids, 1)
        out[f"warmup_b{batch}_s"] = time.perf_counter() - t0
        t_n = _timed(lambda: _generate(model, ids, args.decode), args.reps, dev)
        t_1 = _timed(lambda: _generate(model, ids, 1), args.reps, dev)
        out[f"decode_b{batch}_tok_s"] = batch * (args.decode - 1) / max(t_n - t_1, 1e-9)
        out[f"decode_b{batch}_step_ms"] = (t_n - t_1) / (args.decode - 1) * 1e3
        if dev == "cuda" and batch == 1:
            try:
                out.update(gpu_time_per_token(model, ids, args.decode))
            except Exception as e:  # noqa: BLE001 - the profile is extra; the row stands without it
                out["gpu_profile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    if args.prefill:
        ids = torch.randint(3, int(vocab), (1, args.prefill), generator=g).to(dev)
        t0 = time.perf_counter()
        _generate(model, ids, 1)
        out["warmup_prefill_s"] = time.perf_counter() - t0
        t = _timed(lambda: _generate(model, ids, 1), args.reps, dev)
        out["prefill_tok_s"] = args.prefill / t
    return out


def _weight_gib(device: str, before: int) -> float:
    if device != "cuda":
        return float("nan")
    gc.collect()
    torch.cuda.synchronize()
    return (torch.cuda.memory_allocated() - before) / 2 ** 30


def _table(results: dict, card: str) -> str:
    base = results.get("fp16-compiled", {})
    lines = [f"| method ({card}) | decode b1 tok/s | ×fp16c | GPU ms/token b1 | ×fp16c | decode b16 tok/s | ×fp16c "
             "| prefill tok/s | ×fp16c | weight GiB | logits err |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(r, key, fmt="{:.0f}"):
        v = r.get(key)
        ratio = f"{v / base[key]:.2f}" if v and base.get(key) else ""
        return (fmt.format(v) if v is not None else "–"), ratio

    for name, r in results.items():
        if "error" in r or "skipped" in r:
            lines.append(f"| {name} | {r.get('error', r.get('skipped'))[:80]} | | | | | | | | | |")
            continue
        d1, d1r = cell(r, "decode_b1_tok_s")
        d16, d16r = cell(r, "decode_b16_tok_s")
        g = r.get("gpu_ms_per_token")
        g_s = f"{g:.3f}" if g else "–"
        g_r = f"{base['gpu_ms_per_token'] / g:.2f}" if g and base.get("gpu_ms_per_token") else ""
        pf, pfr = cell(r, "prefill_tok_s")
        lines.append(f"| {name} | {d1} | {d1r} | {g_s} | {g_r} | {d16} | {d16r} | {pf} | {pfr} | {r.get('weight_gib', float('nan')):.2f} "
                     f"| {r.get('logits_rel_err', float('nan')):.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--rows", default="all")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--decode", type=int, default=33, help="new tokens per timed generate")
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, eager backend")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b]
    if args.tiny:
        args.shape, args.layers, args.prefill, args.decode, args.reps = "tiny", 2, 32, 5, 1
        args.batches = [1, 2]
    args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    backend = "triton" if args.device == "cuda" else "eager"
    names = (TINY_ROWS if args.tiny else list(ROWS)) if args.rows == "all" else args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")

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
    meta = {"card": card, "torch": torch.__version__, "args": {k: v for k, v in vars(args).items()},
            "params": sum(p.numel() for p in base.parameters()), "vocab": vocab,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{card}, torch {torch.__version__}, {args.shape} shape, {args.layers} layers, vocab {vocab}, "
          f"{meta['params'] / 1e9:.2f}B params", flush=True)
    results: dict[str, dict] = {}
    for name in names:
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
        try:
            model = ROWS[name](base, calib, backend)
            r = {"build_s": time.perf_counter() - t0}
            r["weight_gib"] = fp16_gib if model is base else _weight_gib(args.device, before)
            r.update(measure(model, args, None if name == "fp16-eager" else ref_logits, probe))
            r.pop("logits")
            r["row_s"] = time.perf_counter() - t0
            counters = torch._dynamo.utils.counters
            r["graph_breaks"] = sum(counters["graph_break"].values())
            r["graphs"] = counters["stats"].get("unique_graphs", 0)
            results[name] = r
        except Exception as e:  # noqa: BLE001 - a benchmark reports what failed and goes on
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
        print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in results[name].items()}, flush=True)
        if model is not base:
            del model
        torch._dynamo.reset()
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "bench_generate.json"), "w") as f:
                json.dump({**meta, "results": results}, f, indent=2)
    print()
    print(_table(results, card))


if __name__ == "__main__":
    main()
