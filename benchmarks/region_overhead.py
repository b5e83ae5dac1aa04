"""Per-region cost on the GPU: one decoder block's MLP and q_proj of the Llama-1.1B shape, compiled
with backend="triton", against the float modules - do_bench time and host time per call, at
prefill (M = 2048) and decode (M = 1) sizes. Separates kernel time from Python/launch overhead.

    PYTHONPATH=.:benchmarks:$PYTHONPATH python benchmarks/region_overhead.py
"""

from __future__ import annotations

import time

import torch
import triton

import qcompiler
from bench_e2e_llama import build  # noqa: E402 - sibling script
from qcompiler.capture import RegionModule


def main() -> None:
    model = build(1)
    calib = [{"input_ids": torch.randint(3, 32000, (1, 256), device="cuda")}]
    qm = qcompiler.compile(model, "int8-outlier", calib, backend="triton", progress=False)
    regions = {m.path: m for m in qm.model.modules() if isinstance(m, RegionModule)}
    pairs = [("mlp", model.model.layers[0].mlp, regions["model.layers.0.mlp"]),
             ("q_proj", model.model.layers[0].self_attn.q_proj, regions["model.layers.0.self_attn.q_proj"])]
    print(f"{torch.cuda.get_device_name()}")
    print("| M | module | fp16 µs (do_bench) | fp16 host µs/call | qcompiler µs (do_bench) | qcompiler host µs/call |")
    print("|---|---|---|---|---|---|")
    for m in (2048, 1):
        x = torch.randn(1, m, 2048, device="cuda", dtype=torch.float16)
        for name, fp, qc in pairs:
            row = [str(m), name]
            for f in (lambda: fp(x), lambda: qc(x)):
                with torch.no_grad():
                    f()
                    torch.cuda.synchronize()
                    ms = triton.testing.do_bench(f, warmup=20, rep=100)
                    start = time.perf_counter()
                    for _ in range(50):
                        f()
                    host = (time.perf_counter() - start) / 50 * 1e6
                    torch.cuda.synchronize()
                row += [f"{ms * 1e3:.1f}", f"{host:.1f}"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
