"""``qcompiler inspect DIR [DIR ...]``: the report of saved models, plots, the graph view."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qcompiler.cli._common import CliError, ExitCode, base_model_for, load_saved, print_report

__all__ = ["register", "run", "write_plots", "pick_layer"]

HELP = "show the report of saved models; optionally verify them, plot, and draw the graph"


def register(sub, common) -> None:
    p = sub.add_parser("inspect", parents=[common], help=HELP, description=HELP + ".",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                           "examples:\n"
                           "  qcompiler inspect out/minilm-int8\n"
                           "  qcompiler inspect out/minilm-int8 --format json > report.json\n"
                           "  qcompiler inspect out/minilm-int8 --plots out/plots --layer 0.intermediate.dense\n"
                           "  qcompiler inspect out/a out/b out/c --plots out/plots   # + errors_by_scheme.png\n"
                           "  qcompiler inspect out/minilm-int8 --graph out/graph.html"))
    p.add_argument("dirs", nargs="+", metavar="DIR", help="directories written by 'qcompiler compile'")
    p.add_argument("--format", choices=["table", "markdown", "json"], default="table", help="report format")
    p.add_argument("--verify", action="store_true", help="check the files' sha256, tensor dtypes and shapes")
    p.add_argument("--plots", metavar="OUTDIR",
                   help="write PNG plots: outlier features and quantization grid of --layer; with several "
                        "DIRs also the per-layer error of each")
    p.add_argument("--layer", help="layer for the plots (a full name or a unique suffix; default: the one "
                                   "with the most outlier dims)")
    p.add_argument("--graph", metavar="HTML", help="write the before/after graph view (loads the model)")
    p.add_argument("--model", help="the float model, if it moved since compile (directory or 'minilm')")
    p.set_defaults(run=run)


def pick_layer(report, name: str | None) -> str:
    layers = [r.layer for r in report.quantized] or [r.layer for r in report.layers]
    if not layers:
        raise CliError("the report has no layers", ExitCode.INPUT)
    if name is None:
        best = max(report.quantized or report.layers, key=lambda r: len(r.outlier_dims or []))
        return best.layer
    hits = [layer for layer in layers if layer == name] or [layer for layer in layers if layer.endswith(name)]
    if len(hits) != 1:
        raise CliError(f"--layer {name!r} matches {len(hits)} layers", ExitCode.USAGE,
                       hint=f"layers: {', '.join(layers[:6])}{', ...' if len(layers) > 6 else ''}")
    return hits[0]


def _weight_row(model, layer: str):
    """The row of the layer's float weight with the largest max|w| / rms: where absmax hurts most."""
    if model is None:
        return None
    w = dict(model.named_parameters()).get(f"{layer}.weight")
    if w is None or w.dim() != 2:
        return None
    w = w.detach().float()
    ratio = w.abs().amax(dim=1) / w.square().mean(dim=1).sqrt().clamp_min(1e-12)
    return w[int(ratio.argmax())]


def write_plots(report, absmax: dict[str, Any], thresholds: dict[str, float], model, out_dir: Path,
                layer: str | None) -> list[Path]:
    from qcompiler.viz import plots

    name = pick_layer(report, layer)
    out, written = Path(out_dir), []
    safe = name.replace("/", "_")
    if name in absmax:
        row = next((r for r in report.layers if r.layer == name), None)
        written.append(plots.plot_outlier_features(absmax[name], out / f"outliers_{safe}.png",
                                                   threshold=thresholds.get(name, 6.0), layer=name,
                                                   outlier_dims=row.outlier_dims if row else None))
    else:
        print(f"note: no calibration statistics for {name}: outlier plot skipped", file=sys.stderr)
    w = _weight_row(model, name)
    if w is not None:
        written.append(plots.plot_quantization_grid(w, out / f"grid_{safe}.png", name=f"a row of {name}.weight"))
    return written


def _saved_thresholds(doc: dict[str, Any]) -> dict[str, float]:
    out = {}
    for region in doc.get("regions", []):
        for node in region.get("graph", []):
            spec = (node.get("meta") or {}).get("qcompiler.spec", {}).get("value")
            if isinstance(spec, dict) and spec.get("layer") and isinstance(spec.get("threshold"), (int, float)):
                out[spec["layer"]] = float(spec["threshold"])
    return out


def _header(d: Path, doc: dict[str, Any]) -> str:
    v, base, comp = doc.get("versions", {}), doc.get("base_model", {}), doc.get("compile", {})
    size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    return (f"{d}/: {size / 2**20:.1f} MiB on disk; base {base.get('model_class', '?')} "
            f"(sha256 {str(base.get('sha256', '?'))[:12]}); scheme {comp.get('scheme')}"
            f"{' ' + str(comp['options']) if comp.get('options') else ''}; saved with qcompiler "
            f"{v.get('qcompiler')}, torch {v.get('torch')}")


def run(args) -> int:
    from qcompiler.report.render import from_dict
    from qcompiler.serialize import read_description, read_tensors, verify_files

    if args.plots:  # before the work, not after it
        from qcompiler.viz.plots import require_matplotlib
        require_matplotlib()
    reports = {}
    for d in map(Path, args.dirs):
        doc = verify_files(d) if args.verify else read_description(d)
        report = from_dict(doc["report"])
        reports[f"{report.scheme} ({d.name})" if len(args.dirs) > 1 else report.scheme] = report
        if args.format == "table":
            print(_header(d, doc))
            if args.verify:
                print(f"{d}/: files verified (sha256, {len(doc['tensors'])} tensors)")
        print_report(report, args.format)
        if args.plots:
            name = pick_layer(report, args.layer)
            key = doc.get("calibration_absmax", {}).get(name)
            absmax = read_tensors(d, [key]) if key else {}
            try:
                model = base_model_for(d, args.model).model
            except CliError as e:
                print(f"note: {e.message}: quantization grid skipped", file=sys.stderr)
                model = None
            sub = Path(args.plots) / d.name if len(args.dirs) > 1 else Path(args.plots)
            for p in write_plots(report, {name: absmax[key]} if key else {}, _saved_thresholds(doc), model,
                                 sub, name):
                print(f"wrote {p}", file=sys.stderr)
    if args.plots and len(reports) > 1:
        from qcompiler.viz.plots import plot_scheme_errors
        p = plot_scheme_errors(reports, Path(args.plots) / "errors_by_scheme.png")
        print(f"wrote {p}", file=sys.stderr)
    if args.graph:
        if len(args.dirs) > 1:
            raise CliError("--graph takes one DIR", ExitCode.USAGE)
        from qcompiler.viz.graph_view import write_html
        qm, _ = load_saved(args.dirs[0], args.model)
        print(f"wrote {write_html(qm, args.graph, title=f'{Path(args.dirs[0]).name}')}", file=sys.stderr)
    return ExitCode.OK
