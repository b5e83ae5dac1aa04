"""Where the fast generate path's greedy tokens first differ from the eager path's, and why.

    python benchmarks/fast_vs_eager_tokens.py --schemes w4-weight-only,int8-outlier --out r.json

For each scheme, on the small Llama of ``gpu_user_path.py``: eager ``generate()`` (with its scores),
then the lean loop as shipped, then the lean loop with transformers' own ``StaticCache.reset()``
instead of :func:`qcompiler.runtime.cache_reset.reset_cache`. A record: the first new token at
which each fast variant differs from eager, and the eager logits' top-1 minus top-2 margin at that
step. A margin of a few hundredths (random weights have many near-ties) says rounding picked the
other token; a wide one would say something else went wrong. Equal tokens between the two fast
variants clear the batched cache reset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gpu_user_path import DEVICE, BACKEND, small_llama


def _first_diff(a: torch.Tensor, b: torch.Tensor, prompt: int):
    diff = (a[0, prompt:] != b[0, prompt:]).nonzero()
    return int(diff[0]) if diff.numel() else None


def _old_reset(cache, also_zero=()):
    cache.reset()
    for t in also_zero:
        t.zero_()


def run(scheme: str, new: int) -> dict:
    import qcompiler
    from qcompiler.runtime import decode_loop, disable_fast_generate, enable_fast_generate
    model = small_llama()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32000, (1, 24), generator=g).to(DEVICE)
    calib = [dict(input_ids=torch.randint(0, 32000, (2, 32), generator=g).to(DEVICE)) for _ in range(2)]
    qm = qcompiler.compile(model, scheme, calib, backend=BACKEND, progress=False)
    with torch.no_grad():
        fast = qm.generate(ids, max_new_tokens=new, do_sample=False)
        fast_again = qm.generate(ids, max_new_tokens=new, do_sample=False)  # captured prompt, replayed step
        real = decode_loop.reset_cache
        decode_loop.reset_cache = _old_reset
        try:
            enable_fast_generate(qm)  # a new loop: captures again with transformers' reset
            old = qm.generate(ids, max_new_tokens=new, do_sample=False)
        finally:
            decode_loop.reset_cache = real
        disable_fast_generate(qm)
        eager = qm.generate(ids, max_new_tokens=new, do_sample=False, output_scores=True,
                            return_dict_in_generate=True)
    prompt = ids.shape[1]
    out = dict(scheme=scheme, new_tokens=new)
    for name, toks in (("fast", fast), ("fast_second_call", fast_again), ("fast_transformers_reset", old)):
        step = _first_diff(toks, eager.sequences, prompt)
        rec = dict(first_diff=step)
        if step is not None:
            top = eager.scores[step][0].float().topk(2).values
            rec["eager_top2_margin"] = round(float(top[0] - top[1]), 5)
        out[name] = rec
    out["fast_equals_transformers_reset"] = bool(torch.equal(fast, old))
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--schemes", default="w4-weight-only,int8-outlier")
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for scheme in args.schemes.split(","):
        rows.append(run(scheme, args.new))
        if args.out:
            args.out.write_text(json.dumps(dict(backend=BACKEND, rows=rows), indent=1))


if __name__ == "__main__":
    main()
