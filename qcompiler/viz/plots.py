"""Matplotlib pictures of what quantization does to a real model, written as PNG files.

* :func:`plot_outlier_features` - per-feature max |x| of one layer's input over the calibration
  data, the threshold line and the outlier dims marked: the seed's LLM.int8() picture for a
  real layer.
* :func:`plot_scheme_errors` - per-layer SQNR of several schemes side by side.
* :func:`plot_quantization_grid` - one real row quantized with a scaling factor larger than,
  equal to and smaller than its max |x|: the seed's first figure, with the perturbation each
  causes.

Figures are drawn with the object-oriented API on an Agg canvas, so no pyplot state or display
is touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from qcompiler.errors import ConfigError, UnsupportedError
from qcompiler.install_hint import install_hint

__all__ = ["require_matplotlib", "plot_outlier_features", "plot_scheme_errors", "plot_quantization_grid", "quantize_with_scale",
           "short_layer_names"]

_SCHEME_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def require_matplotlib() -> None:
    """Raises :class:`UnsupportedError` now if plots cannot be drawn here, so a command that ends
    with plots (``qcompiler compile --plots``) fails before its work, not after."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UnsupportedError("plots need matplotlib", hint=install_hint("tools", "matplotlib")) from e


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_outlier_features(absmax: torch.Tensor, path: str | os.PathLike, *, threshold: float = 6.0,
                          layer: str = "", outlier_dims: Sequence[int] | None = None) -> Path:
    """Bars of max |x| per input feature, the threshold as a dashed line, outliers in red and
    labelled with their index. ``outlier_dims`` defaults to the features above ``threshold``."""
    a = absmax.detach().float().cpu().flatten()
    if a.numel() == 0:
        raise ConfigError(f"layer '{layer}' has no calibration statistics to plot")
    dims = sorted(int(i) for i in (outlier_dims if outlier_dims is not None
                                   else torch.nonzero(a > threshold).flatten().tolist()))
    fig = _figure(11, 4.2)
    ax = fig.add_subplot()
    x = torch.arange(a.numel())
    ax.bar(x.numpy(), a.numpy(), width=1.0, color="#7fa7d1", linewidth=0)
    if dims:
        ax.bar(dims, a[dims].numpy(), width=max(1.0, a.numel() / 300), color="#d62728", linewidth=0)
        for d in dims[:12]:
            ax.annotate(str(d), (d, float(a[d])), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=8, color="#d62728")
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1)
    ax.text(a.numel() * 0.995, threshold, f" threshold {threshold:g}", va="bottom", ha="right", fontsize=9)
    ax.set_xlim(-0.5, a.numel() - 0.5)
    ax.set_xlabel("input feature (hidden dim)")
    ax.set_ylabel("max |x| over calibration rows")
    ax.set_title(f"{layer or 'layer'}: {len(dims)} outlier feature{'s' if len(dims) != 1 else ''} of "
                 f"{a.numel()} (max |x| {float(a.max()):.1f}, median {float(a.median()):.2f})")
    return _save(fig, path)


def short_layer_names(names: Sequence[str]) -> list[str]:
    """Drops the dotted prefix all names share, so an axis shows ``0.attention.self.query``."""
    parts = [n.split(".") for n in names]
    common = 0
    while parts and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return [".".join(p[common:]) for p in parts]


def plot_scheme_errors(reports: Mapping[str, object], path: str | os.PathLike, *,
                       metric: str = "sqnr_db") -> Path:
    """Each layer's error under each scheme (``{scheme: Report}``), side by side: grouped bars
    for a few layers, one marker line per scheme when bars would be too thin. Higher SQNR is
    better; a layer a scheme has no figure for (kept in float, not calibrated) is left out."""
    if not reports:
        raise ConfigError("plot_scheme_errors needs at least one report")
    layers: list[str] = []
    for rep in reports.values():
        for r in rep.layers:
            if r.layer not in layers:
                layers.append(r.layer)
    n, k = len(layers), len(reports)
    bars = n * k <= 80
    fig = _figure(min(16.0, max(8.0, 0.32 * n + 2)), 5.2)
    ax = fig.add_subplot()
    width = 0.8 / k
    for j, (scheme, rep) in enumerate(reports.items()):
        by = {r.layer: getattr(r, metric) for r in rep.layers}
        xs, ys = [], []
        for i, layer in enumerate(layers):
            v = by.get(layer)
            if v is not None and v == v and abs(v) != float("inf"):
                xs.append(i - 0.4 + width * (j + 0.5) if bars else i)
                ys.append(v)
        colour = _SCHEME_COLOURS[j % len(_SCHEME_COLOURS)]
        if bars:
            ax.bar(xs, ys, width=width, label=scheme, color=colour)
        else:
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1, label=scheme, color=colour)
    names = [name if len(name) <= 30 else "\u2026" + name[-29:] for name in short_layer_names(layers)]
    ax.set_xticks(range(n), names, rotation=70, ha="right", fontsize=7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel({"sqnr_db": "SQNR on calibration rows [dB] (higher is better)",
                   "rel_error": "relative error on calibration rows"}.get(metric, metric))
    ax.set_title(f"per-layer error of each scheme ({n} layers)")
    ax.legend(ncols=min(k, 6), fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def quantize_with_scale(x: torch.Tensor, alpha: float, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax quantization of ``x`` with scaling factor ``alpha`` (the value mapped to the top
    code): ``q = clamp(round(x * qmax / alpha), -qmax, qmax)``; returns ``(q, q * alpha / qmax)``."""
    qmax = 2 ** (bits - 1) - 1
    q = torch.clamp(torch.round(x.double() * qmax / alpha), -qmax, qmax)
    return q, q * alpha / qmax


def plot_quantization_grid(row: torch.Tensor, path: str | os.PathLike, *, bits: int = 4,
                           factors: Sequence[float] = (1.7, 1.0, 0.45), count: int = 24,
                           name: str = "") -> Path:
    """``count`` values of ``row`` around its largest one, quantized with alpha = factor * max|row|
    for each factor: the values (black), their quantized values (blue; the grey stem between the
    two is the perturbation), the grid of representable values (grey lines) and clipped values
    (red). The default 4 bits (codes -7..7) make the grid visible, as in the seed's figure; the
    panel titles give the mean squared error over the whole row."""
    if bits < 2 or bits > 8:
        raise ConfigError(f"bits must be 2..8, got {bits}")
    full = row.detach().double().cpu().flatten()
    start = max(0, min(int(full.abs().argmax()) - count // 2, full.numel() - count))
    x = full[start:start + count]
    amax = float(full.abs().max())
    if amax == 0:
        raise ConfigError("the row is all zeros: nothing to quantize")
    qmax = 2 ** (bits - 1) - 1
    fig = _figure(11, 2.6 * len(factors) + 0.6)
    axes = fig.subplots(len(factors), 1, sharex=True, squeeze=False)[:, 0]
    labels = {1: "larger than", 0: "equal to", -1: "smaller than"}
    idx = torch.arange(start, start + x.numel()).numpy()
    window = slice(start, start + x.numel())
    for ax, f in zip(axes, factors):
        alpha = f * amax
        _, deq = quantize_with_scale(full, alpha, bits)
        err = (deq - full)
        clipped = (full.abs() > alpha)[window]
        step = alpha / qmax
        lim = 1.15 * amax
        for k in range(-qmax, qmax + 1):
            if abs(k * step) <= lim:
                ax.axhline(k * step, color="#bbbbbb", linewidth=0.6, zorder=0)
        if alpha <= lim:
            ax.axhline(alpha, color="#d62728", linewidth=0.8, linestyle=":")
            ax.axhline(-alpha, color="#d62728", linewidth=0.8, linestyle=":")
        ax.vlines(idx, x.numpy(), deq[window].numpy(), color="#999999", linewidth=1)
        ax.scatter(idx, x.numpy(), color="black", s=14, label="x", zorder=3)
        ax.scatter(idx, deq[window].numpy(), color="#1f77b4", marker="_", s=120, linewidths=2,
                   label="dequantized", zorder=3)
        if bool(clipped.any()):
            ax.scatter(idx[clipped.numpy()], deq[window][clipped].numpy(), color="#d62728", marker="x", s=40,
                       label="clipped", zorder=4)
        rel = 0 if abs(f - 1) < 1e-9 else (1 if f > 1 else -1)
        ax.set_title(f"alpha = {alpha:.3g} ({labels[rel]} max|x| = {amax:.3g}): step {step:.3g}, "
                     f"MSE {float(err.square().mean()):.3g} over the row, "
                     f"{int((full.abs() > alpha).sum())} clipped", fontsize=9)
        ax.set_ylim(-lim, lim)
        ax.legend(loc="upper right", fontsize=7, ncols=3)
    axes[-1].set_xlabel(f"element of {name or 'the row'} ({x.numel()} of {full.numel()}, around its max |x|); "
                        f"{bits}-bit absmax codes -{qmax}..{qmax}")
    return _save(fig, path)
