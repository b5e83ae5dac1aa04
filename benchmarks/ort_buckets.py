"""Per-layer, per-M-bucket export plans for the ONNX Runtime benchmark, chosen from op timings.

For every M the benchmark measures, :func:`plans` keeps, for each weight shape of the model, the
fastest of the forms ``nbits`` / ``dequant`` / ``int8`` (``qcompiler.backends.onnxruntime.
layer_forms``) in the op-level timings of the same run (``ort_op_timings.py``), and turns on ORT's
fpA_intB GEMM for that bucket's session when it made MatMulNBits faster there. Each distinct
plan becomes an export target ``ort-cuda-plan-<i>`` (one ONNX file per bucket); at run time a
call of M tokens goes to the file made for its bucket. ``OrtModule`` timing: qcompiler's own
session path (``backend="onnxruntime"``: torch CUDA tensors bound by pointer, outputs by DLPack).
"""

from __future__ import annotations

import statistics
import time

__all__ = ["plans", "register_plan_targets", "time_ortmodule"]

_CANDIDATES = ("nbits", "dequant", "int8")


def plans(op_res: dict, ms: list[int]) -> dict[int, tuple[str, bool]]:
    """``{M: (plan text, fpA_intB on)}`` from ``{"NxK": {form: {M: ms}}}``."""
    from qcompiler.backends.onnxruntime.layer_forms import choose_plan, format_plan
    out = {}
    for m in ms:
        timings, fpa_votes = {}, []
        for shape, by_form in op_res.items():
            n, k = (int(v) for v in shape.split("x"))
            t = {f: by_form[f][m] for f in _CANDIDATES if m in by_form.get(f, {})}
            fpa = by_form.get("nbits_fpaintb", {}).get(m)
            if fpa is not None and "nbits" in t and fpa < t["nbits"]:
                t["nbits"], fpa_votes = fpa, fpa_votes + [True]
            timings[(n, k)] = t
        plan = choose_plan(timings)
        uses_nbits = any(f.value == "nbits" for f in plan.values())
        out[m] = (format_plan(plan), bool(fpa_votes) and uses_nbits)
    return out


def register_plan_targets(by_m: dict[int, tuple[str, bool]]) -> dict[str, tuple[str, bool, list[int]]]:
    """One export target per distinct plan: ``{target: (plan, fpA_intB, [M...])}``."""
    from qcompiler.backends.onnxruntime import ExportTarget, register_target
    from qcompiler.backends.onnxruntime.translations import ort_table
    targets: dict[str, tuple[str, bool, list[int]]] = {}
    for m, (plan, fpa) in sorted(by_m.items()):
        name = next((t for t, (p, f, _) in targets.items() if (p, f) == (plan, fpa)), None)
        if name is None:
            name = f"ort-cuda-plan-{len(targets)}"
            targets[name] = (plan, fpa, [])
            register_target(ExportTarget(
                name, f"lower-ort-matmul-nbits{{plan={plan}}},dce,label-onnx-lowering{{matmul_nbits=true}}",
                ort_table, ("CUDAExecutionProvider", "CPUExecutionProvider"), f"per-layer plan for M in bucket: {plan}"))
        targets[name][2].append(m)
    return targets


def time_ortmodule(exported, ids, iters: int) -> float:
    """Median ms of ``OrtModule(exported)(input_ids=ids)`` (ids a CUDA tensor: the I/O-binding path)."""
    import torch

    from qcompiler.backends.onnxruntime import OrtModule
    runner = OrtModule(exported, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert runner.on_cuda, runner.providers
    with torch.no_grad():
        for _ in range(5):
            runner(input_ids=ids)
        torch.cuda.synchronize()
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            runner(input_ids=ids)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
