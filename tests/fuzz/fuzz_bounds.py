"""Each scheme's stated error bound, written down once: a worst-case rule for one linear layer,
derived from the scheme's grid (round to nearest: at most half a quantization step per value),
which ``fuzz_reference`` composes through the graph.

A rule gets the layer's exact input ``x``, its bound ``e`` and ``xa = |x| + e >= |x_hat|`` and
returns a ``[M, N]`` bound on ``|f_hat(x_hat) - f(x_hat)|``. For a product of two rounded
operands, ``|x_hat w_hat - x w| <= |dx| |w| + |x| |dw| + |dx| |dw|`` summed over K.

``BOUNDS[scheme]``: the rule, whether it bounds every element (``"elementwise"``) or the
Frobenius norm over the calibration data (``"frobenius"``: GPTQ / AWQ, see there), the scheme
options a fuzz case may draw, and the one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from fuzz_reference import LinearSite

__all__ = ["SchemeBound", "BOUNDS", "NF4_LEVELS", "int8_rule", "uint_rule", "nf4_rule", "smooth_rule"]

# QLoRA's NF4 levels (Dettmers et al. 2023, appendix E): the definition, not qcompiler's copy.
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
              0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
              0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
NF4_HALF_GAP = max(b - a for a, b in zip(NF4_LEVELS, NF4_LEVELS[1:])) / 2  # nearest level: <= half the widest gap


def _int8_product(x_err: torch.Tensor, xa: torch.Tensor, w: torch.Tensor, w_err: torch.Tensor) -> torch.Tensor:
    """sum_k |dx| |w| + |x| |dw| + |dx| |dw|  for dx [M, K], dw [N, K]."""
    return x_err @ w.abs().T + xa @ w_err.T + x_err @ w_err.T


def int8_rule(act: str, weight: str, outliers: str = "none", threshold: float = 6.0) -> Callable:
    """W8A8 absmax int8 (``act`` row | tensor, ``weight`` channel | tensor): half a step of
    ``max|.| / 127`` per operand. Outliers (LLM.int8()): ``static`` columns (calibrated
    ``max |x_j| > threshold``) stay float in X and W and are left out of both scales; ``dynamic``
    columns (``max |x_hat_j| > threshold`` in this call) stay float in X only, W stays int8.
    A column whose side of the threshold the float rounding could change is counted as quantized:
    that only loosens the bound."""

    def rule(site: LinearSite, x, e, xa):
        w = site.weight
        k = w.shape[1]
        if outliers == "static":
            surely = site.calib_absmax - site.calib_uncert > threshold
        elif outliers == "dynamic":
            surely = (x.abs().amax(dim=0) - e.amax(dim=0) > threshold) if x.shape[0] else torch.zeros(k, dtype=torch.bool)
        else:
            surely = torch.zeros(k, dtype=torch.bool)
        inlier = (~surely).double()
        xq = xa * inlier  # the values X's scale is taken over
        dx = (xq.amax(dim=1, keepdim=True) if act == "row" else xq.amax().reshape(1, 1)) / 127 / 2
        x_err = dx * inlier
        wq = w.abs() * inlier if outliers == "static" else w.abs()
        dw = (wq.amax(dim=1, keepdim=True) if weight == "channel" else wq.amax().reshape(1, 1)) / 127 / 2
        w_err = dw * (inlier if outliers == "static" else torch.ones(k, dtype=torch.float64))
        return _int8_product(x_err, xa, w, w_err.expand(w.shape[0], k))

    return rule


def _groups(t: torch.Tensor, g: int) -> torch.Tensor:
    """[N, K] -> [N, G, g], the last group padded with zeros (the layout of qcompiler.quant)."""
    n, k = t.shape
    groups = -(-k // g)
    return torch.nn.functional.pad(t, (0, groups * g - k)).reshape(n, groups, g)


def _per_weight(per_group: torch.Tensor, g: int, k: int) -> torch.Tensor:
    return per_group.repeat_interleave(g, dim=1)[:, :k]


def _group_size(k: int, g: int) -> int:
    return k if g == 0 or g >= k else g


def uint_rule(bits: int, group_size: int, symmetric: bool) -> Callable:
    """Round-to-nearest uint codes per group of K: |w - w_hat| <= s / 2 (nothing is clipped), with
    s = max|w_g| / (2^(b-1) - 1) symmetric or (max(w_g, 0) - min(w_g, 0)) / (2^b - 1) asymmetric;
    plus the scale held in the model dtype (|code - zero| <= 2^b times one rounding of s)."""

    def rule(site: LinearSite, x, e, xa):
        w = site.weight
        n, k = w.shape
        g = _group_size(k, group_size)
        wg = _groups(w, g)
        if symmetric:
            s = wg.abs().amax(dim=-1) / (2 ** (bits - 1) - 1)
        else:
            s = (wg.amax(dim=-1).clamp_min(0) - wg.amin(dim=-1).clamp_max(0)) / (2 ** bits - 1)
        dw = _per_weight(s * (0.5 + 2 ** bits * site.u), g, k)
        return xa @ dw.T

    return rule


def nf4_rule(block_size: int, double_quant: bool) -> Callable:
    """NF4: |w/a - nearest level| <= half the widest gap of the QLoRA levels, a = block absmax.
    Double quantization stores a - mean(a) in int8 with absmax scales per 256 blocks, so a moves
    by at most max|a - mean(a)| / 254, and |level| <= 1 carries that into w."""

    def rule(site: LinearSite, x, e, xa):
        w = site.weight
        n, k = w.shape
        g = _group_size(k, block_size)
        a = _groups(w, g).abs().amax(dim=-1)
        da = (a - a.mean()).abs().amax() / 254 if double_quant else torch.zeros((), dtype=torch.float64)
        dw = _per_weight(NF4_HALF_GAP * a + da + 2 * site.u * (a + da), g, k)
        return xa @ dw.T

    return rule


def smooth_rule(alpha: float) -> Callable:
    """SmoothQuant: exact rewrite x W^T = (x/s)(W s)^T with s_j = max|X_j|^alpha / max|W_j|^(1-alpha)
    (calibrated max over the layers sharing x; s_j = 1 where either is 0), then row x channel int8
    on (x/s, W s); the division by s costs one rounding of x/s."""
    int8 = int8_rule("row", "channel")

    def rule(site: LinearSite, x, e, xa):
        ax, aw = site.calib_absmax, site.group_weight_absmax
        s = ax.clamp_min(1e-5) ** alpha / aw.clamp_min(1e-5) ** (1 - alpha)
        s = torch.where((ax > 0) & (aw > 0), s.clamp(1e-5, 1e5), torch.ones_like(s))
        xs = xa / s
        smoothed = LinearSite(site.index, site.src, site.weight * s, site.bias, aw * s, None, None, site.u)
        return int8(smoothed, x / s, e / s + site.u * xs, xs + site.u * xs)

    return rule


@dataclass(frozen=True)
class SchemeBound:
    rule: Callable[[dict], Callable]           # scheme options -> layer rule
    why: str
    check: str = "elementwise"                 # or "frobenius" (over the calibration batches)
    options: tuple[dict, ...] = field(default=({},))  # option sets a fuzz case draws from
    calibrated: bool = True                    # give calibration data (False: example_inputs only)


# threshold 0: every column that is not all zero stays float
_INT8_OUTLIER_OPTS = ({}, {"outlier_mode": "dynamic"}, {"threshold": 3.0}, {"threshold": 0.0},
                      {"threshold": 0.0, "outlier_mode": "dynamic"})

BOUNDS: dict[str, SchemeBound] = {
    "int8-outlier": SchemeBound(
        lambda o: int8_rule("row", "channel", o.get("outlier_mode", "static"), o.get("threshold", 6.0)),
        "vector-wise int8, half a step per operand; outlier columns exact in X (and in W when static)",
        options=_INT8_OUTLIER_OPTS),
    "int8-vectorwise": SchemeBound(lambda o: int8_rule("row", "channel"),
                                   "half a step of max|x_row|/127 and of max|w_channel|/127"),
    "int8-absmax": SchemeBound(lambda o: int8_rule("tensor", "tensor"),
                               "half a step of max|X|/127 and of max|W|/127 (one scale each)"),
    "w8-weight-only": SchemeBound(lambda o: uint_rule(8, o.get("group_size", 0), o.get("symmetric", True)),
                                  "int8 weights, round to nearest: half a step per weight, X exact",
                                  options=({}, {"symmetric": False})),
    "w4-weight-only": SchemeBound(lambda o: uint_rule(4, o.get("group_size", 128), o.get("symmetric", True)),
                                  "int4 weights per group, round to nearest: half a step per weight, X exact",
                                  options=({}, {"group_size": 8}, {"group_size": 8, "symmetric": False})),
    "nf4": SchemeBound(lambda o: nf4_rule(o.get("block_size", 64), o.get("double_quant", False)),
                       "nearest NF4 level: half the widest level gap times the block absmax (+ the int8 absmax)",
                       options=({}, {"block_size": 8, "double_quant": True})),
    "w8a8-smoothquant": SchemeBound(lambda o: smooth_rule(0.5),
                                    "an exact rescaling, then vector-wise int8 on (x/s, W s)"),
    # GPTQ and AWQ move weights off the nearest grid point on purpose (error feedback; scaled and
    # clipped ranges), so no per-weight bound holds. What holds by construction is that each picks,
    # per layer, quantized weights whose error on the calibration inputs is no worse than rounding
    # to nearest on the same grid (GPTQ minimises it column by column; AWQ's search includes s = 1
    # and clip ratio 1, i.e. plain round-to-nearest). So their error over the calibration batches,
    # in Frobenius norm, is held to the round-to-nearest worst case of the same grid.
    "gptq-w4": SchemeBound(lambda o: uint_rule(4, o.get("group_size", 128), o.get("symmetric", True)),
                           "no worse than int4 round-to-nearest on the same grid, on the calibration data",
                           "frobenius", ({}, {"group_size": 8, "act_order": True}, {"group_size": 8, "symmetric": False})),
    "gptq-w8": SchemeBound(lambda o: uint_rule(8, o.get("group_size", 0), o.get("symmetric", True)),
                           "no worse than int8 round-to-nearest on the same grid, on the calibration data",
                           "frobenius", ({}, {"act_order": True})),
    "awq-w4": SchemeBound(lambda o: uint_rule(4, o.get("group_size", 128), o.get("symmetric", False)),
                          "no worse than int4 round-to-nearest (asymmetric) on the same grid, on the calibration data",
                          "frobenius", ({}, {"group_size": 8}, {"group_size": 8, "symmetric": True})),
}
