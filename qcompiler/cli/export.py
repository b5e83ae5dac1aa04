"""``qcompiler export DIR --onnx model.onnx``: a saved model as ONNX."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qcompiler.cli._common import CliError, ExitCode, load_saved
from qcompiler.install_hint import install_hint

__all__ = ["register", "run"]

HELP = "export a saved model to ONNX"


def register(sub, common) -> None:
    p = sub.add_parser("export", parents=[common], help=HELP, description=HELP + " (loads it on top of its "
                       "float model, then calls qcompiler.export_onnx with the example input it was captured with).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  qcompiler export out/minilm-int8 --onnx out/minilm-int8.onnx")
    p.add_argument("dir", metavar="DIR", help="a directory written by 'qcompiler compile'")
    p.add_argument("--onnx", required=True, metavar="PATH", help="where to write the .onnx file")
    p.add_argument("--target", default="generic",
                   help="ONNX flavour: generic (standard operators), ort-cpu or ort-cuda (default generic)")
    p.add_argument("--model", help="the float model, if it moved since compile (directory or 'minilm')")
    p.set_defaults(run=run)


def run(args) -> int:
    import qcompiler

    export = getattr(qcompiler, "export_onnx", None)
    if export is None:
        raise CliError("ONNX export is not available in this qcompiler (qcompiler.export_onnx is missing)",
                       ExitCode.UNAVAILABLE, hint="update qcompiler; then " + install_hint("onnx"))
    qm, _ = load_saved(args.dir, args.model)
    rec = qm.record
    if rec.example_args and rec.example_kwargs:
        raise CliError("the saved example call has positional and keyword arguments; export takes one kind",
                       ExitCode.UNAVAILABLE, hint="use qcompiler.export_onnx from Python")
    example = rec.example_kwargs if rec.example_kwargs else tuple(rec.example_args)
    try:
        export(qm, example, args.onnx, target=args.target)
    except ImportError as e:
        raise CliError(f"ONNX export needs {e.name}", ExitCode.UNAVAILABLE, hint=install_hint("onnx", e.name or "onnx")) from e
    out = Path(args.onnx)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, target {args.target})", file=sys.stderr)
    return ExitCode.OK
