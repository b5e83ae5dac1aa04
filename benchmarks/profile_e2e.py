"""Where the time goes end to end: torch.profiler over one prefill and a few decode steps of the
Llama-architecture model, fp16 vs qcompiler (Triton backend), on the GPU.

    PYTHONPATH=.:$PYTHONPATH python benchmarks/profile_e2e.py [--layers 4]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_e2e_llama import build  # noqa: E402 - sibling script
from timing import card_name, wall_ms  # sibling module

__all__ = ["main", "run"]


@torch.no_grad()
def run(model, ids, steps):
    out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    nxt = out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    import qcompiler

    model = build(args.layers)
    ids = torch.randint(3, 32000, (1, args.prefill), device="cuda")
    calib = [{"input_ids": torch.randint(3, 32000, (1, 256), device="cuda")}]
    qm = qcompiler.compile(model, "int8-outlier", calib, backend="triton", progress=False)
    print(card_name())
    for name, m in (("fp16", model), ("qcompiler", qm)):
        run(m, ids, args.steps)
        run(m, ids, args.steps)
        dec = wall_ms(lambda: run(m, ids[:, :16], args.steps)) / (args.steps + 1)
        pre = wall_ms(torch.no_grad()(lambda: m(input_ids=ids, use_cache=False)))
        print(f"{name}: prefill {pre:.2f} ms, decode step {dec:.2f} ms", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run(m, ids, 2)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
