"""Regenerates the pictures in docs/tools.md from the bundled MiniLM (no network).

    python docs/img/make_images.py            # needs matplotlib, rich and chromium on PATH

Every image is produced by qcompiler's own code: the plots by qcompiler.viz.plots, the graph view
by qcompiler.viz.graph_view (screenshot by headless Chromium), the report table by rich.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import qcompiler
from qcompiler.models import CALIBRATION_SENTENCES, load_minilm
from qcompiler.viz import graph_view, plots

HERE = Path(__file__).resolve().parent
SCHEMES = ["int8-absmax", "int8-vectorwise", "int8-outlier", "w8a8-smoothquant", "w4-weight-only", "nf4"]
LAYER = "encoder.layer.1.intermediate.dense"


def chromium_png(html: Path, png: Path, size: str = "1600,1000") -> None:
    exe = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
    if exe is None:
        sys.exit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={size}", "--hide-scrollbars",
                        "--virtual-time-budget=3000", f"--screenshot={png}", html.as_uri()],
                       check=True, capture_output=True, timeout=180)


def main() -> None:
    m = load_minilm()
    batches = m.encode(CALIBRATION_SENTENCES, 16)
    compiled = {}
    for s in SCHEMES:
        print("compiling", s, flush=True)
        compiled[s] = qcompiler.compile(m.model, s, batches, progress=False)
    qm = compiled["int8-outlier"]
    spec_threshold = 6.0
    plots.plot_outlier_features(qm.record.calibration_absmax[LAYER], HERE / "outliers.png",
                                threshold=spec_threshold, layer=LAYER,
                                outlier_dims=next(r.outlier_dims for r in qm.report().layers if r.layer == LAYER))
    w = dict(m.model.named_parameters())[f"{LAYER}.weight"].detach()
    ratio = w.abs().amax(1) / w.square().mean(1).sqrt()
    plots.plot_quantization_grid(w[int(ratio.argmax())], HERE / "quantization_grid.png", name=f"a row of {LAYER}.weight")
    plots.plot_scheme_errors({s: q.report() for s, q in compiled.items()}, HERE / "errors_by_scheme.png")
    with tempfile.TemporaryDirectory() as tmp:
        page = graph_view.write_html(qm, Path(tmp) / "graph.html", title="all-MiniLM-L6-v2 compiled with int8-outlier")
        chromium_png(page, HERE / "graph_view.png")
        from rich.console import Console
        console = Console(record=True, width=150)
        console.print(qm.report())
        svg = Path(tmp) / "report.svg"
        console.save_svg(str(svg), title="qcompiler inspect out/minilm-int8")
        html = Path(tmp) / "report.html"
        html.write_text(f"<html><body style='margin:0;background:#fff'>{svg.read_text()}</body></html>")
        import re
        w, h = (float(v) for v in re.search(r'viewBox="0 0 ([0-9.]+) ([0-9.]+)"', svg.read_text()).groups())
        chromium_png(html, HERE / "report.png", size=f"{int(w) + 4},{int(h) + 4}")
    print("wrote", *sorted(p.name for p in HERE.glob("*.png")))


if __name__ == "__main__":
    main()
