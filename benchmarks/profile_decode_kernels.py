"""GPU-only time of each decode-size linear kernel against the bytes it must read, on the
Llama-3-8B layer shapes: what share of the card's copy bandwidth each kernel streams.

    PYTHONPATH=. python benchmarks/profile_decode_kernels.py [--ms 1,4,16,64]

Each kernel is called on ``COPIES`` different weights in turn (together several times the L2, so
no call finds its weight cached) inside one captured CUDA graph, which is replayed: the time per
call is GPU time only, as in a CUDA-graphed decode step, and capturing also checks that the op
is CUDA-graph-safe. Bytes = the weight's stored bytes (codes + scales + zeros/outlier columns).
Ceiling: a device-to-device copy of 1 GiB (read + write bytes per second). Rows: fp16 ``F.linear``
(cuBLAS), qcompiler's ``weight_only_uint_linear`` w8 (per channel) and w4 (g128), its
``weight_only_nf4_linear`` (b64) and ``int8_outlier_linear`` (4 outlier columns; weight-only int8
GEMV for M <= 16, quantize + int8 GEMM above). JSON to $OUT/profile_decode_kernels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from timing import graph_replay_us  # noqa: E402 - sibling module

SHAPES = {"qo": (4096, 4096), "kv": (1024, 4096), "gate/up": (14336, 4096), "down": (4096, 14336)}  # N, K
COPIES = 8


def _bytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def make(method: str, n: int, k: int, dev: str):
    """-> (fn(x) -> y, weight bytes)."""
    ops = torch.ops.qcompiler_triton
    g = torch.Generator(device=dev).manual_seed(n + k)
    if method == "fp16":
        w = torch.randn(n, k, device=dev, dtype=torch.float16, generator=g) * 0.02
        return (lambda x: F.linear(x, w)), _bytes([w])
    if method in ("w8", "w4"):
        bits = 8 if method == "w8" else 4
        q = torch.randint(0, 256, (n, k if bits == 8 else k // 2), device=dev, dtype=torch.uint8, generator=g)
        group = k if bits == 8 else 128
        s = torch.rand(n, k // group, device=dev, generator=g) * 1e-3 + 1e-4
        return (lambda x: ops.weight_only_uint_linear(x, q, s, None, None, bits, group)), _bytes([q, s])
    if method == "nf4":
        q = torch.randint(0, 256, (n, k // 2), device=dev, dtype=torch.uint8, generator=g)
        a = torch.rand(n, k // 64, device=dev, generator=g) * 0.05
        return (lambda x: ops.weight_only_nf4_linear(x, q, a, None, None, None, 64, 1)), _bytes([q, a])
    if method == "int8-outlier":
        wq = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8, generator=g)
        ws = torch.rand(n, device=dev, generator=g) * 0.05 + 0.01
        idx = torch.tensor([3, 100, 1000, 2000], device=dev)
        wq[:, idx] = 0
        mask = torch.zeros(k, dtype=torch.int8, device=dev)
        mask[idx] = 1
        wo = torch.randn(n, 4, device=dev, dtype=torch.float16, generator=g) * 0.02
        return (lambda x: ops.int8_outlier_linear(x, wq, ws, idx, mask, wo, None)), _bytes([wq, ws, wo])
    raise ValueError(method)


def graph_time_us(fns, x, reps: int = 20) -> float:
    return graph_replay_us([lambda f=f: f(x) for f in fns], reps)


def copy_bandwidth() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = graph_time_us([lambda _: b.copy_(a)], None, reps=10)
    return 2 * a.numel() / (us * 1e-6)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,4,16,64")
    ap.add_argument("--methods", default="fp16,w8,w4,nf4,int8-outlier")
    args = ap.parse_args()
    import qcompiler.backends.triton  # noqa: F401 - registers torch.ops.qcompiler_triton

    card = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"{card}: copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    for m in [int(v) for v in args.ms.split(",")]:
        for shape, (n, k) in SHAPES.items():
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            for method in args.methods.split(","):
                made = None
                try:
                    made = [make(method, n, k, "cuda") for _ in range(COPIES)]
                    nbytes = made[0][1]
                    us = graph_time_us([f for f, _ in made], x)
                    rows.append(dict(m=m, shape=shape, n=n, k=k, method=method, us=us, bytes=nbytes,
                                     tb_s=nbytes / (us * 1e-6) / 1e12, share_of_copy=nbytes / (us * 1e-6) / bw))
                except Exception as e:  # noqa: BLE001 - report and go on
                    rows.append(dict(m=m, shape=shape, method=method, error=f"{type(e).__name__}: {str(e)[:200]}"))
                r = rows[-1]
                print(r if "error" in r else f"M={m:3d} {shape:8s} {method:13s} {r['us']:8.2f} us "
                      f"{r['tb_s']:.2f} TB/s ({100 * r['share_of_copy']:.0f}% of copy)", flush=True)
                del made
                if os.environ.get("OUT"):  # after every row: a run cut short keeps what it measured
                    with open(os.path.join(os.environ["OUT"], "profile_decode_kernels.json"), "w") as f:
                        json.dump({"card": card, "copy_tb_s": bw / 1e12, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
