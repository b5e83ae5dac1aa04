"""The ``qcompiler`` command line: compile, inspect, export, bench.

    qcompiler compile minilm --scheme int8-outlier --out out/minilm-int8
    qcompiler inspect out/minilm-int8 --format markdown
    qcompiler export out/minilm-int8 --onnx out/minilm-int8.onnx
    qcompiler bench out/minilm-int8

Exit codes: 0 ok, 2 usage (bad arguments, unknown scheme/option), 3 input (missing or damaged
file, wrong model, capture/calibration failure), 4 internal (a pass or the verifier failed, or a
bug), 5 unavailable (a feature or dependency missing here), 130 interrupted. Errors are one line
plus a hint on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from qcompiler.cli import bench as _bench
from qcompiler.cli import compile as _compile
from qcompiler.cli import export as _export
from qcompiler.cli import inspect as _inspect
from qcompiler.cli._common import CliError, ExitCode

__all__ = ["main", "build_parser", "ExitCode"]

_COMMANDS = [_compile, _inspect, _export, _bench]


def _exit_code(e: BaseException) -> ExitCode:
    from qcompiler.errors import (CalibrationError, CaptureError, ConfigError, PassError, QCompilerError,
                                  UnsupportedError, VerificationError)
    from qcompiler.serialize import LoadError, SaveError

    table = [(ConfigError, ExitCode.USAGE), (UnsupportedError, ExitCode.UNAVAILABLE),
             ((CaptureError, CalibrationError, LoadError, SaveError), ExitCode.INPUT),
             ((PassError, VerificationError, QCompilerError), ExitCode.INTERNAL)]
    for cls, code in table:
        if isinstance(e, cls):
            return code
    return ExitCode.INTERNAL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qcompiler", description="Quantize PyTorch / Hugging Face models (LLM.int8() and friends), "
        "inspect, export and benchmark the result.",
        epilog="exit codes: 0 ok, 2 usage, 3 input/model error, 4 internal error, 5 not available here. "
               "Run 'qcompiler COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    for cmd in _COMMANDS:
        cmd.register(sub, common)
    return parser


def _fail(message: str, hint: str | None) -> None:
    print(f"qcompiler: error: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on bad arguments
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        return int(args.run(args) or ExitCode.OK)
    except KeyboardInterrupt:
        _fail("interrupted", None)
        return ExitCode.INTERRUPTED
    except CliError as e:
        if args.debug:
            traceback.print_exc()
        _fail(e.message, e.hint)
        return e.code
    except Exception as e:  # noqa: BLE001 - every error becomes one line and an exit code
        from qcompiler.errors import QCompilerError

        if args.debug:
            traceback.print_exc()
        if isinstance(e, QCompilerError):
            _fail(e.message.strip().splitlines()[0], e.hint)
        else:
            _fail(f"internal error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                  None if args.debug else "run again with --debug for the traceback, and report it")
        return _exit_code(e)
