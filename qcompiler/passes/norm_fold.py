"""Folding ``1/s`` into an eager norm module's weight (and bias), outside every captured region.

A per-channel rescaling ``x / s`` of what a norm returns is free when the norm is affine in its
parameters: ``RMSNorm: w * n(x)`` and ``LayerNorm: w * n(x) + b`` both give ``out / s`` with
``w / s`` (and ``b / s``). Whether a module is such a norm is not guessed from its class name:
:func:`norm_fold_problem` runs it on the input it was called with, once with its parameters and
once with them divided by a random ``s``, and compares. A Gemma-style ``(1 + w) * n(x)`` or a
norm without an affine weight fails that check and is named in the report.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["norm_fold_problem", "divide_norm_output"]


def _affine(module: nn.Module, k: int) -> dict[str, torch.Tensor] | None:
    params = dict(module.named_parameters(recurse=False))
    w, b = params.get("weight"), params.get("bias")
    if w is None or w.dim() != 1 or w.shape[0] != k or not w.is_floating_point():
        return None
    if b is not None and (b.dim() != 1 or b.shape[0] != k):
        return None
    if set(params) - {"weight", "bias"} or any(True for _ in module.children()):
        return None
    return {"weight": w} if b is None else {"weight": w, "bias": b}


def norm_fold_problem(module: nn.Module, path: str, sample: torch.Tensor, k: int) -> str:
    """``""`` when ``module``'s output divided by any ``s > 0`` ([k]) is what it returns with its
    parameters divided by ``s``; else why not."""
    params = _affine(module, k)
    if params is None:
        return f"'{path}' ({type(module).__name__}) has no [{k}] weight (and bias) of its own to absorb 1/s"
    g = torch.Generator().manual_seed(0)
    s = (0.5 + 1.5 * torch.rand(k, generator=g)).to(params["weight"].device)
    with torch.no_grad():
        x = sample[..., :].reshape(-1, sample.shape[-1])[:64]
        want = module(x).float() / s
        got = functional_call(module, {n: p / s.to(p.dtype) for n, p in params.items()}, (x,)).float()
    err = (got - want).norm() / want.norm().clamp_min(1e-12)
    tol = 1e-5 if params["weight"].dtype == torch.float32 else 2e-2  # bf16/fp16 round w / s
    if not bool(err <= tol):
        return (f"'{path}' ({type(module).__name__}) is not linear in its weight: with weight / s its output "
                f"is off by {float(err):.2g} (relative) from output / s")
    return ""


def divide_norm_output(module: nn.Module, s: torch.Tensor) -> None:
    """``module``'s weight (and bias) ``/= s`` in place: its output becomes ``out / s``."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(module, name, None)
            if isinstance(p, torch.Tensor):
                p.div_(s.to(device=p.device, dtype=p.dtype))
