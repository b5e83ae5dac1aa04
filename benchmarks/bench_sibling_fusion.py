"""Sibling fusion on and off, same model, same card: decode tok/s through the lean loop
(:class:`qcompiler.runtime.DecodeLoop`, one CUDA graph per decode step, ``--step`` picks the eager or
the compiled step; prompts eager), prefill tok/s, kernel calls per forward, weight bytes.

    PYTHONPATH=.:$PYTHONPATH python benchmarks/bench_sibling_fusion.py [--shape 1.1b] [--layers 4] \
        [--schemes w4-weight-only,int8-outlier] [--decode 17] [--prefill 512]

Model: ``generate_rows.build`` (a Llama of the named shape, random weights, fp16). Decode tok/s at
batch 1 = ``(N - 1) / (t(N new tokens) - t(1 new token))``, the median of ``--reps``; prefill =
``--prefill`` tokens / the time of ``generate(max_new_tokens=1)``. JSON to $OUT/bench_sibling_fusion.json
after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import qcompiler
from generate_rows import build
from qcompiler.runtime import DecodeLoop, DecodeLoopConfig, StepMode, TokenChoice


class _Calls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += getattr(func, "namespace", "") == "qcompiler_triton"
        return func(*args, **(kwargs or {}))


def _time(fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1.1b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--schemes", default="w4-weight-only")
    ap.add_argument("--decode", type=int, default=17)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--step", default="cuda-graph", choices=[m.value for m in StepMode],
                    help="the lean loop's decode step (compiled-cuda-graph: Inductor, seconds to compile)")
    args = ap.parse_args()
    base = build(args.shape, args.layers, None, "cuda", torch.float16)
    vocab = base.config.vocab_size
    gen = torch.Generator().manual_seed(3)
    calib = [{"input_ids": torch.randint(3, vocab, (1, 128), generator=gen).cuda()} for _ in range(2)]
    prompt = torch.randint(3, vocab, (1, 16), generator=gen).cuda()
    long = torch.randint(3, vocab, (1, args.prefill), generator=gen).cuda()
    meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "args": vars(args),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results: dict[str, dict] = {}
    for scheme in args.schemes.split(","):
        tokens = {}
        for fuse in (False, True):
            name = f"{scheme} fuse_siblings={fuse}"
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            qm = qcompiler.compile(base, scheme, calib, backend="triton", progress=False, fuse_siblings=fuse)
            compile_s = time.perf_counter() - t0
            weight = torch.cuda.memory_allocated() - before
            calls = _Calls()
            with torch.no_grad(), calls:
                qm(input_ids=prompt[:, :1])

            loop = DecodeLoop(qm, DecodeLoopConfig(step=StepMode(args.step), compiled_prefill=False))

            def gen_n(n, ids=prompt):
                return loop.generate(ids, max_new_tokens=n, min_new_tokens=n, choice=TokenChoice(eos=(), pad=2))

            tokens[fuse] = gen_n(args.decode)  # warm-up: captures the decode graph
            gen_n(1)
            t_n, t_1 = _time(lambda: gen_n(args.decode), args.reps), _time(lambda: gen_n(1), args.reps)
            gen_n(1, long)
            t_p = _time(lambda: gen_n(1, long), args.reps)
            results[name] = {"decode_tok_s": (args.decode - 1) / (t_n - t_1), "prefill_tok_s": args.prefill / t_p,
                             "kernel_calls_per_forward": calls.n, "weight_bytes_allocated": weight,
                             "compile_s": compile_s}
            if fuse:
                results[name]["tokens_equal_unfused"] = bool(torch.equal(tokens[True], tokens[False]))
            print(name, json.dumps(results[name]), flush=True)
            del qm, loop
            torch.cuda.empty_cache()
            if os.environ.get("OUT"):
                with open(os.path.join(os.environ["OUT"], "bench_sibling_fusion.json"), "w") as f:
                    json.dump({**meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
