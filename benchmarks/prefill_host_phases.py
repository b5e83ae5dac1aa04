"""Where a captured prompt's ``generate()`` call spends its host time, phase by phase.

A prompt replayed as a CUDA graph still costs a call's worth of host work around the replay
(``profile_prefill.py``: 8B x 2 layers, 4.35 ms wall for a 2.79 ms replay). :func:`host_phases`
stamps the time at which each step of the lean loop is entered, over ``reps`` calls of
``generate(ids, max_new_tokens=1)``, and returns the median of each gap:

    plan          generate() entered -> DecodeLoop.generate (settings, request checks)
    loop          -> DecodeLoop._prefill (cache-place check, slot lookup)
    prepare       -> PromptGraphs.run (cache reset, mask check, positions, slot counters)
    copy_inputs   -> CUDAGraph.replay (ids / positions into the graph's buffers)
    launch        -> DecodeLoop._advance (the replay launch)
    choose        -> DecodeLoop._trim (next-token choice, output writes)
    finish        -> generate() returned (trim, concatenation)
    gpu_wait      -> torch.cuda.synchronize() returned (the GPU still running what was launched)

The host phases before ``launch`` are time the GPU sits idle; those after it overlap the replay.
"""

from __future__ import annotations

import time

import torch

__all__ = ["host_phases", "PHASES"]

PHASES = ("plan", "loop", "prepare", "copy_inputs", "launch", "choose", "finish", "gpu_wait")
_MARKS = ("loop", "prefill", "prompt_run", "replay", "advance", "trim")


def host_phases(generate, reps: int = 10) -> dict:
    """Median ms of each of :data:`PHASES` over ``reps`` calls of ``generate()`` (a prompt that is
    already captured); phases a call did not reach are missing."""
    from qcompiler.runtime import decode_loop
    from qcompiler.runtime.prompt_graph import PromptGraphs
    marks: dict[str, float] = {}
    targets = [(decode_loop.DecodeLoop, "generate"), (decode_loop.DecodeLoop, "_prefill"), (PromptGraphs, "run"),
               (torch.cuda.CUDAGraph, "replay"), (decode_loop.DecodeLoop, "_advance"), (decode_loop.DecodeLoop, "_trim")]
    saved = [(owner, name, owner.__dict__[name]) for owner, name in targets]

    def stamped(real, label):
        def call(*args, **kwargs):
            marks.setdefault(label, time.perf_counter())
            return real(*args, **kwargs)
        return call

    for (owner, name, real), label in zip(saved, _MARKS):
        setattr(owner, name, stamped(real, label))
    rows = []
    try:
        for _ in range(reps):
            marks.clear()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            generate()
            t_ret = time.perf_counter()
            torch.cuda.synchronize()
            t_end = time.perf_counter()
            stamps = [t0] + [marks.get(m) for m in _MARKS] + [t_ret, t_end]
            rows.append({p: (b - a) * 1e3 for p, a, b in zip(PHASES, stamps, stamps[1:]) if a is not None and b is not None})
    finally:
        for owner, name, real in saved:
            setattr(owner, name, real)
    out = {}
    for p in PHASES:
        vals = sorted(r[p] for r in rows if p in r)
        if vals:
            out[p] = round(vals[len(vals) // 2], 4)
    return out
