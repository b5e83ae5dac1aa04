"""Problem builders shared by the Triton kernel tests (inputs with outlier columns, static-mode
weights) and the device they run on."""

from __future__ import annotations

import torch

from qcompiler.ops import quantize_weight

__all__ = ["DEVICE", "make_x", "make_static_weights", "eps", "replay_in_cuda_graph"]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_x(m: int, k: int, n_out: int, dtype: torch.dtype, seed: int, scale: float = 20.0):
    """X ~ N(0, 1) with ``n_out`` random outlier columns ``±(6.5 + scale * |N(0, 1)|)``: every
    element of them is past the usual threshold 6, so dynamic detection finds exactly them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    idx = torch.randperm(k, generator=g)[:n_out].sort().values
    col = x[:, idx]
    x[:, idx] = torch.where(col >= 0, 1.0, -1.0) * (6.5 + scale * col.abs())
    return x.to(dtype).to(DEVICE), idx.to(DEVICE)


def make_static_weights(n: int, k: int, idx: torch.Tensor, dtype: torch.dtype, seed: int):
    """What quantize-weights produces in static mode: W with the outlier columns zeroed, quantized
    per output channel, plus the fp copy of those columns and a bias."""
    g = torch.Generator().manual_seed(seed + 1)
    w = (torch.randn(n, k, generator=g) * 0.05).to(DEVICE)
    w_in = w.clone()
    w_in[:, idx] = 0
    wq, ws = quantize_weight(w_in)
    bias = (torch.randn(n, generator=g) * 0.1).to(dtype).to(DEVICE)
    return w, wq, ws, w[:, idx].to(dtype).contiguous(), bias


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def replay_in_cuda_graph(run):
    """``run()`` captured in a CUDA graph and replayed once: its output after the replay."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = run()
    g.replay()
    torch.cuda.synchronize()
    return out
