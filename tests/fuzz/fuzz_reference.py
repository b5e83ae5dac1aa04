"""A float64 reference for a ``GraphSpec`` that also carries, per node, an elementwise bound on how
far the quantized graph's value may be from it.

Every node holds ``(y, E)``: the exact value ``y`` (float64, from the model's own weights) and
``E >= |y_hat - y|``. A linear's quantized output on its actual input ``x_hat = x + e``
(``|e| <= E``) is ``f_hat(x_hat) = f(x) + W e + (f_hat(x_hat) - f(x_hat))``, so

    E_out = E @ |W|^T  +  rule(|x| + E)  +  float rounding,

where ``rule`` is the scheme's worst-case quantization error of one linear (``fuzz_bounds``) on an
input no larger than ``|x| + E``, and the float rounding is Higham's ``gamma_n = n u / (1 - n u)``
of the model dtype (``u = 2^-24`` fp32, ``2^-11`` fp16) times ``sum_k |x_k| |w_k| + |b|``, for the
K-term dot products and the few roundings after them. ``relu`` is 1-Lipschitz; ``add`` adds the
bounds (plus one rounding); the concatenated output concatenates them.

Calibration statistics the rules need (``max |x_j|`` of every linear's input over the calibration
batches, as the ``calibrate`` pass sees them on the float graph) come from the same walk, with
their own float-rounding uncertainty, so a rule can tell a column that is surely above a
threshold from one that might be either side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fuzz_graphs import FuzzGraph, GraphSpec

__all__ = ["LinearSite", "unit_roundoff", "gamma", "reference", "calibration_stats"]


def unit_roundoff(dtype: torch.dtype) -> float:
    return {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]


def gamma(n: int, u: float) -> float:
    """Higham's bound on the relative error of an n-term float sum (or product chain)."""
    return n * u / (1.0 - n * u)


@dataclass
class LinearSite:
    """What a rule may read about one linear: its weights, its input node and the calibration stats."""
    index: int                        # position among the graph's linears
    src: int                          # node it reads
    weight: torch.Tensor              # [N, K] float64 (the model's weights, exactly)
    bias: torch.Tensor | None         # [N] float64
    group_weight_absmax: torch.Tensor  # [K]: max |W_j| over every linear reading the same node
    calib_absmax: torch.Tensor | None  # [K]: max |x_j| over the calibration batches (float graph)
    calib_uncert: torch.Tensor | None  # [K]: how far the float graph's max |x_j| may be from it
    u: float                          # unit roundoff of the model dtype


def _sites(spec: GraphSpec, model: FuzzGraph, u: float) -> list[LinearSite]:
    lin_ops = [op for op in spec.ops if op.kind == "linear"]
    ws = [lin.weight.detach().cpu().double() for lin in model.linears]
    bs = [lin.bias.detach().cpu().double() if lin.bias is not None else None for lin in model.linears]
    sites = []
    for i, op in enumerate(lin_ops):
        group = [ws[j] for j, o in enumerate(lin_ops) if o.srcs[0] == op.srcs[0]]
        gmax = torch.stack([w.abs().amax(dim=0) for w in group]).amax(dim=0)
        sites.append(LinearSite(i, op.srcs[0], ws[i], bs[i], gmax, None, None, u))
    return sites


def _walk(spec: GraphSpec, sites: list[LinearSite], x: torch.Tensor, rule, on_linear=None):
    """Evaluate the graph in float64 on ``x``, propagating the bound; ``rule(site, x, xa) -> [M, N]``."""
    u = sites[0].u if sites else 0.0
    x = x.detach().cpu().double().reshape(-1, x.shape[-1])  # row-wise scales are per token; per-tensor ones span all
    nodes = [(x, torch.zeros_like(x))]
    li = 0
    for op in spec.ops:
        if op.kind == "linear":
            site = sites[li]
            li += 1
            xin, e = nodes[op.srcs[0]]
            if on_linear is not None:
                on_linear(site, xin, e)
            w, b = site.weight, site.bias
            y = xin @ w.T + (b if b is not None else 0.0)
            xa = xin.abs() + e
            quant = rule(site, xin, e, xa)
            mag = xa @ w.abs().T + (b.abs() if b is not None else 0.0)
            k = w.shape[1]
            nodes.append((y, e @ w.abs().T + quant + gamma(k + 4, u) * (mag + quant)))
        elif op.kind == "relu":
            y, e = nodes[op.srcs[0]]
            nodes.append((y.clamp_min(0), e))
        else:
            (a, ea), (b, eb) = nodes[op.srcs[0]], nodes[op.srcs[1]]
            e = ea + eb
            nodes.append((a + b, e + u * ((a + b).abs() + e)))
    leaves = [nodes[i] for i in spec.leaves()]
    return torch.cat([y for y, _ in leaves], -1), torch.cat([e for _, e in leaves], -1)


def _no_quant(site, x, e, xa):
    return torch.zeros(x.shape[0], site.weight.shape[0], dtype=torch.float64)


def calibration_stats(spec: GraphSpec, model: FuzzGraph, calib: list[torch.Tensor], u: float) -> list[LinearSite]:
    """The sites, with ``max |x_j|`` per linear input over ``calib`` and its float uncertainty."""
    sites = _sites(spec, model, u)
    acc: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(site, xin, e):
        amax, unc = xin.abs().amax(dim=0), e.amax(dim=0)
        if site.index in acc:
            amax, unc = torch.maximum(acc[site.index][0], amax), torch.maximum(acc[site.index][1], unc)
        acc[site.index] = (amax, unc)

    for x in calib:
        _walk(spec, sites, x, _no_quant, record)
    for s in sites:
        s.calib_absmax, s.calib_uncert = acc[s.index]
    return sites


def reference(spec: GraphSpec, sites: list[LinearSite], x: torch.Tensor, rule) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, E)``: the float64 output on ``x`` and the elementwise bound on the quantized graph's error."""
    return _walk(spec, sites, x, rule)
