"""Per-region cost on the GPU: one decoder block's MLP and q_proj of the Llama-1.1B shape, compiled
with backend="triton", against the float modules - do_bench time (median) and host time per call,
at prefill (M = 2048) and decode (M = 1) sizes. Separates kernel time from Python/launch overhead.
Timing from ``benchmarks/timing.py``; rows also go to ``$OUT/region_overhead.json`` when ``OUT`` is set.

    PYTHONPATH=.:benchmarks:$PYTHONPATH python benchmarks/region_overhead.py
"""

from __future__ import annotations

import torch

import qcompiler
from bench_e2e_llama import build  # noqa: E402 - sibling script
from qcompiler.capture import RegionModule
from timing import JsonResults, bench_ms, host_us, run_meta, warm_up  # sibling module

__all__ = ["main"]


def main() -> None:
    model = build(1)
    calib = [{"input_ids": torch.randint(3, 32000, (1, 256), device="cuda")}]
    qm = qcompiler.compile(model, "int8-outlier", calib, backend="triton", progress=False)
    regions = {m.path: m for m in qm.model.modules() if isinstance(m, RegionModule)}
    pairs = [("mlp", model.model.layers[0].mlp, regions["model.layers.0.mlp"]),
             ("q_proj", model.model.layers[0].self_attn.q_proj, regions["model.layers.0.self_attn.q_proj"])]
    sink = JsonResults("region_overhead.json", run_meta())
    print(sink.meta["card"])
    print("| M | module | fp16 µs (do_bench) | fp16 host µs/call | qcompiler µs (do_bench) | qcompiler host µs/call |")
    print("|---|---|---|---|---|---|")
    for m in (2048, 1):
        x = torch.randn(1, m, 2048, device="cuda", dtype=torch.float16)
        for name, fp, qc in pairs:
            row, record = [str(m), name], {"M": m, "module": name}
            for label, f in (("fp16", lambda: fp(x)), ("qcompiler", lambda: qc(x))):
                with torch.no_grad():
                    warm_up(f)
                    ms = bench_ms(f, rep=100, warmup=20)
                    host = host_us(f, n=50)
                row += [f"{ms * 1e3:.1f}", f"{host:.1f}"]
                record[label] = {"us": ms * 1e3, "host_us": host}
            sink.add(record)
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
