"""Helpers for the ONNX export tests: the outlier MLP, its inputs, error measures, ORT runs."""

from __future__ import annotations

import onnx
import torch
from torch import nn

from qcompiler.backends.onnxruntime import OrtModule

__all__ = ["CPU", "OUTLIER_COLS", "MLP", "outlier_x", "rel_err", "run_ort", "onnx_ops"]

CPU = ["CPUExecutionProvider"]
OUTLIER_COLS = (3, 11, 20)


class MLP(nn.Module):
    """A transformer MLP: up-projection, GELU, down-projection (odd hidden size on purpose)."""

    def __init__(self, hidden: int = 24, ffn: int = 72):
        super().__init__()
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


def outlier_x(*shape: int, seed: int = 0, scale: float = 20.0) -> torch.Tensor:
    """Gaussian activations whose columns OUTLIER_COLS are ``scale`` times larger (LLM.int8())."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[..., list(OUTLIER_COLS)] *= scale
    return x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def run_ort(exported, *args, **kwargs):
    with torch.no_grad():
        return OrtModule(exported, CPU)(*args, **kwargs)


def onnx_ops(path) -> set[tuple[str, str]]:
    return {(n.domain or "ai.onnx", n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node}
