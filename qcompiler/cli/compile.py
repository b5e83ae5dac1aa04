"""``qcompiler compile MODEL --scheme S [--calib FILE] --out DIR``: quantize and save."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qcompiler.cli._common import (MINILM, CliError, ExitCode, encode_sentences, load_base_model, print_report,
                                   read_sentences)

__all__ = ["register", "run", "parse_option"]

HELP = "quantize a model and save it (model.safetensors + qcompiler.json + report.md/json)"


def register(sub, common) -> None:
    import qcompiler

    p = sub.add_parser("compile", parents=[common], help=HELP, description=HELP + ".",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                           "examples:\n"
                           "  qcompiler compile minilm --scheme int8-outlier --out out/minilm-int8\n"
                           "  qcompiler compile ./my-llama --calib sentences.txt --scheme int8-outlier \\\n"
                           "      -o threshold=4 --out out/llama-int8 --graph --plots\n"
                           f"schemes: {', '.join(qcompiler.list_schemes())}"))
    p.add_argument("model", metavar="MODEL",
                   help=f"a local Hugging Face model directory, or '{MINILM}' for the bundled all-MiniLM-L6-v2")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the compiled model to")
    p.add_argument("--scheme", default="int8-outlier", choices=qcompiler.list_schemes(), metavar="SCHEME",
                   help="quantization scheme (default: int8-outlier; see the list below)")
    p.add_argument("--calib", metavar="FILE",
                   help="calibration text, one sentence per line (default: a built-in set of 64 sentences)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a scheme option, e.g. -o threshold=4 (repeatable)")
    p.add_argument("--backend", default="eager", help="lowering backend (default: eager)")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per calibration batch (default 16)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sentence at most (default 128)")
    p.add_argument("--max-batches", type=int, default=None, help="use at most this many calibration batches")
    p.add_argument("--loader", choices=["auto", "causal-lm", "base"], default="auto",
                   help="Hugging Face class: AutoModelForCausalLM or AutoModel (default: from config.json)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="dtype to load the float model in (default float32)")
    p.add_argument("--report", choices=["table", "markdown", "json", "none"], default="table",
                   help="what to print on stdout (default: table)")
    p.add_argument("--graph", action="store_true", help="also write DIR/graph.html (before/after graph view)")
    p.add_argument("--plots", action="store_true", help="also write DIR/plots/*.png (outliers, quantization grid)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def parse_option(text: str) -> tuple[str, Any]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise CliError(f"option {text!r} is not KEY=VALUE", ExitCode.USAGE, hint="e.g. -o threshold=4")
    try:
        parsed = json.loads(value)  # numbers, true/false, null
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args) -> int:
    import qcompiler

    if args.plots:  # before the work, not after it
        from qcompiler.viz.plots import require_matplotlib
        require_matplotlib()
    options = dict(parse_option(o) for o in args.option)
    if args.batch_size < 1 or args.max_length < 1:
        raise CliError("--batch-size and --max-length must be positive", ExitCode.USAGE)
    sentences = read_sentences(args.calib) if args.calib else None
    _say(f"loading {args.model} ...")
    base = load_base_model(args.model, args.loader, args.dtype)
    if sentences is None:
        from qcompiler.models import CALIBRATION_SENTENCES
        sentences = CALIBRATION_SENTENCES
        if args.model != MINILM:
            _say("no --calib given: calibrating on the built-in English sentence set")
    batches = encode_sentences(base, sentences, args.batch_size, args.max_length)
    if args.max_batches:
        batches = batches[: args.max_batches]
    _say(f"compiling with {args.scheme} ({len(batches)} calibration batches, {len(sentences)} sentences) ...")
    qm = qcompiler.compile(base.model, args.scheme, batches, backend=args.backend,
                           progress=not args.no_progress, **options)
    out = Path(args.out)
    qcompiler.save(qm, out, metadata={"source": base.source, "calibration": {
        "file": str(Path(args.calib).resolve()) if args.calib else "built-in", "sentences": len(sentences),
        "batch_size": args.batch_size, "max_length": args.max_length}})
    report = qm.report()
    (out / "report.json").write_text(report.to_json())
    (out / "report.md").write_text(report.to_markdown())
    extra = []
    if args.graph:
        from qcompiler.viz.graph_view import write_html
        extra.append(str(write_html(qm, out / "graph.html", title=f"{args.model}: {args.scheme}")))
    if args.plots:
        from qcompiler.cli.inspect import write_plots
        extra += [str(p) for p in write_plots(qm.report(), qm.record.calibration_absmax,
                                              _thresholds(qm), base.model, out / "plots", None)]
    if args.report != "none":
        print_report(report, args.report)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    _say(f"saved {out}/ ({size / 2**20:.1f} MiB): model.safetensors, qcompiler.json, report.md, report.json"
         + "".join(f", {Path(e).relative_to(out)}" for e in extra))
    return ExitCode.OK


def _thresholds(qm) -> dict[str, float]:
    from qcompiler.spec import get_spec

    out = {}
    for gm in qm.graph_modules.values():
        for node in gm.graph.nodes:
            spec = get_spec(node)
            if spec is not None and getattr(spec, "threshold", None) is not None:
                out[spec.layer] = float(spec.threshold)
    return out
