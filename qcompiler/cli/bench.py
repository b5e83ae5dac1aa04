"""``qcompiler bench DIR``: latency and throughput of a saved model against its float original."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

from qcompiler.cli._common import CliError, ExitCode, load_saved

__all__ = ["register", "run", "time_model"]

HELP = "latency/throughput of a saved model vs its float original, on this machine"


def register(sub, common) -> None:
    p = sub.add_parser("bench", parents=[common], help=HELP, description=HELP + ".",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  qcompiler bench out/minilm-int8 --batch-size 8 --seq-len 64 --iters 20")
    p.add_argument("dir", metavar="DIR", help="a directory written by 'qcompiler compile'")
    p.add_argument("--batch-size", type=int, default=8, help="sentences per call (default 8)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sentence, padded (default 64)")
    p.add_argument("--iters", type=int, default=10, help="timed calls per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--model", help="the float model, if it moved since compile (directory or 'minilm')")
    p.set_defaults(run=run)


def _inputs(base, rec, batch: int, seq: int) -> dict:
    from qcompiler.models import EVAL_SENTENCES

    if base.tokenizer is None:  # no tokenizer: the call the model was captured with
        return dict(rec.example_kwargs)
    text = [EVAL_SENTENCES[i % len(EVAL_SENTENCES)] for i in range(batch)]
    return dict(base.tokenizer(text, padding="max_length", truncation=True, max_length=seq, return_tensors="pt"))


def time_model(model, inputs: dict, iters: int, warmup: int) -> list[float]:
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            model(**inputs)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - t0)
    return times


def _first(out):
    from qcompiler.api import _first_output
    return _first_output(out)


def run(args) -> int:
    import torch

    if min(args.batch_size, args.seq_len, args.iters) < 1 or args.warmup < 0:
        raise CliError("--batch-size, --seq-len and --iters must be positive", ExitCode.USAGE)
    if args.threads:
        torch.set_num_threads(args.threads)
    qm, base = load_saved(args.dir, args.model)
    inputs = _inputs(base, qm.record, args.batch_size, args.seq_len)
    tokens = int(inputs["attention_mask"].numel()) if "attention_mask" in inputs else None
    rows = {}
    for name, model in (("float", base.model), ("quantized", qm)):
        t = time_model(model, inputs, args.iters, args.warmup)
        med = statistics.median(t)
        rows[name] = {"median_ms": med * 1e3, "p90_ms": sorted(t)[math.ceil(0.9 * len(t)) - 1] * 1e3,
                      "min_ms": min(t) * 1e3, "calls_per_s": 1 / med,
                      "sequences_per_s": args.batch_size / med, "tokens_per_s": tokens / med if tokens else None}
    with torch.inference_mode():
        a, b = _first(base.model(**inputs)), _first(qm(**inputs))
    cos = torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item() \
        if a is not None and b is not None and a.shape == b.shape else None
    rep = qm.report()
    result = {"dir": args.dir, "scheme": rep.scheme, "backend": rep.backend, "device": "cpu",
              "threads": torch.get_num_threads(), "batch_size": args.batch_size, "seq_len": args.seq_len,
              "iters": args.iters, "float": rows["float"], "quantized": rows["quantized"],
              "speedup": rows["float"]["median_ms"] / rows["quantized"]["median_ms"],
              "output_cosine": cos, "model_bytes": {"float": rep.model_bytes_before, "quantized": rep.model_bytes_after}}
    if args.json:
        print(json.dumps(result, indent=2))
        return ExitCode.OK
    _print(result)
    return ExitCode.OK


def _print(r: dict) -> None:
    head = (f"{r['dir']}: scheme {r['scheme']}, backend {r['backend']}, cpu x{r['threads']} threads, "
            f"batch {r['batch_size']} x {r['seq_len']} tokens, {r['iters']} timed calls")
    cols = ["model", "median ms", "p90 ms", "seq/s", "tok/s", "weights MiB"]
    data = [[name, f"{r[name]['median_ms']:.2f}", f"{r[name]['p90_ms']:.2f}", f"{r[name]['sequences_per_s']:.1f}",
             f"{r[name]['tokens_per_s']:.0f}" if r[name]["tokens_per_s"] else "-",
             f"{r['model_bytes'][name] / 2**20:.1f}"] for name in ("float", "quantized")]
    foot = (f"speedup {r['speedup']:.2f}x (float median / quantized median); output cosine vs float "
            + (f"{r['output_cosine']:.6f}" if r["output_cosine"] is not None else "n/a"))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(head)
        print("  ".join(f"{c:>12}" for c in cols))
        for row in data:
            print("  ".join(f"{c:>12}" for c in row))
        print(foot)
        return
    table = Table(title=head, caption=foot)
    for c in cols:
        table.add_column(c, justify="left" if c == "model" else "right")
    for row in data:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 120).print(table)
