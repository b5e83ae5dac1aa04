"""Why the per-M-bucket plan export (``dequant`` everywhere: the same cuBLAS fp16 MatMul as the
baseline) measured 0.88x / 0.98x the fp16 export at M = 16 / 2048 (benchmarks/RESULTS.md, issue #13),
when each row ran once: the two files timed interleaved, A B A B ..., ``--rounds`` times at each M
(the spread tells session-to-session noise from a real gap), then per op type:

* ORT's profiler (``SessionOptions.enable_profiling``): every executed node's ``kernel_time`` summed by
  (op type, execution provider), per run, warm-up runs dropped. On the CUDA EP of the PyPI build this is
  host time (issuing the kernels); CUDA kernel records come only with ``--enable_cuda_profiling`` builds,
  and are summed too when present. The node list is the graph after ORT's load-time optimizations;
* GPU kernel time (``torch.profiler``, CUPTI: every kernel of the process, ORT's included) summed by
  kernel name, per run.

The model and its files are those of ``bench_onnxruntime.py`` (4 Llama blocks, hidden 4096, MLP 11008,
``use_cache=False``, one sequence of M tokens). Rows: ``fp16`` (``export_float_onnx``) and ``plan``
(int8-outlier, ``lower-ort-matmul-nbits{plan=<every shape>:dequant}``). ``--phase export --rows R``
writes R's file into ``--dir`` (run the two in parallel processes); ``--phase time`` times and
profiles what is there. JSON to ``$OUT/ort_ab_profile.json`` after every step.

    PYTHONPATH=. python benchmarks/ort_ab_profile.py --dir /dev/shm/ab --phase export --rows fp16 &
    PYTHONPATH=. python benchmarks/ort_ab_profile.py --dir /dev/shm/ab --phase export --rows plan; wait
    PYTHONPATH=. python benchmarks/ort_ab_profile.py --dir /dev/shm/ab --phase time
    PYTHONPATH=. python benchmarks/ort_ab_profile.py --small        # CPU EP smoke test, all phases
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch

__all__ = ["main", "op_type_times", "kernel_times"]


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="CPU EP, hidden 256, 2 blocks, fp32")
    p.add_argument("--blocks", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--ms", help="token counts timed A B A B (default 16,2048; --small 16,128)")
    p.add_argument("--profile-ms", help="token counts profiled by op type (default: --ms)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--profile-iters", type=int, default=20)
    p.add_argument("--rows", default="fp16,plan")
    p.add_argument("--phase", choices=("all", "export", "time"), default="all")
    p.add_argument("--dir", help="folder of the ONNX files (default: a scratch folder, deleted at the end)")
    a = p.parse_args(argv)
    small = dict(blocks=2, hidden=256, intermediate=688, ms="16,128")
    large = dict(blocks=4, hidden=4096, intermediate=11008, ms="16,2048")
    for k, v in (small if a.small else large).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.ms = [int(m) for m in a.ms.split(",")]
    a.profile_ms = [int(m) for m in a.profile_ms.split(",")] if a.profile_ms else a.ms
    a.check = False
    return a


def _provider(a) -> str:
    return "CPUExecutionProvider" if a.small else "CUDAExecutionProvider"


def dequant_plan(a) -> str:
    """Every weight shape of the model in form ``dequant`` (what the op timings chose for M >= 16)."""
    h, i = a.hidden, a.intermediate
    return f"{h}x{h}:dequant;{i}x{h}:dequant;{h}x{i}:dequant"


def export_row(a, row: str, folder: Path) -> dict:
    import qcompiler
    from bench_onnxruntime import _ids, _model
    from export_stages import export_stages
    from ort_buckets import register_plan_targets
    from qcompiler.backends.onnxruntime import export_float_onnx
    cuda = not a.small
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    t = time.perf_counter()
    model, _ = _model(a, device, dtype)
    example = {"input_ids": _ids(16, device)}
    path = folder / f"{row}.onnx"
    info = {"row": row}
    if row not in ("fp16", "plan"):
        raise SystemExit(f"unknown row {row!r}: fp16 or plan")
    if row == "plan":
        calib = [{"input_ids": _ids(64, device, seed=s)} for s in range(4)]
        qm = qcompiler.compile(model, "int8-outlier", calib, progress=False)
        info["compile_s"] = time.perf_counter() - t
    with export_stages() as stages:  # the export alone (compile's own capture uses torch.export too)
        if row == "fp16":
            export_float_onnx(model, example, path, check=False, external_data=True)
        else:
            target = next(iter(register_plan_targets({16: (dequant_plan(a), False)})))
            out = qcompiler.export_onnx(qm, example, path, target=target, check=False, external_data=True)
            info.update(plan=dequant_plan(a), lowering=sorted(set(out.lowering.values())))
    info["export_s"] = time.perf_counter() - t
    info["stages_s"] = dict(stages)
    (folder / f"{row}.json").write_text(json.dumps(info))
    print(f"  {row}: exported in {info['export_s']:.1f} s; stages "
          f"{ {k: round(v, 1) for k, v in info['stages_s'].items()} }", flush=True)
    return info


def op_type_times(profile_file: str | os.PathLike, skip_runs: int) -> dict:
    """ORT profile -> per run: ``{"runs", "run_us", "by_op": {"Op@Provider": {"us", "nodes"}}, "kernels"}``.
    Node ``kernel_time`` events are assigned to the ``model_run`` they fall in; the first
    ``skip_runs`` runs are dropped."""
    events = json.loads(Path(profile_file).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    keep = runs[skip_runs:]
    if not keep:
        return {"runs": 0}

    def run_of(ts):
        for i, (s, e) in enumerate(keep):
            if s <= ts <= e:
                return i
        return None

    by_op: dict[str, dict] = collections.defaultdict(lambda: {"us": 0.0, "nodes": set()})
    kernels: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and run_of(e["ts"]) is not None:
            args = e.get("args", {})
            key = f"{args.get('op_name', '?')}@{args.get('provider', '?').removesuffix('ExecutionProvider')}"
            by_op[key]["us"] += e["dur"]
            by_op[key]["nodes"].add(e["name"])
        elif e.get("cat") == "Kernel" and run_of(e["ts"]) is not None:  # --enable_cuda_profiling builds only
            kernels[f"{e.get('args', {}).get('op_name', '?')}: {e['name'][:80]}"] += e["dur"]
    n = len(keep)
    return {"runs": n, "run_us": statistics.median(e - s for s, e in keep),
            "by_op": {k: {"us": v["us"] / n, "nodes": len(v["nodes"])}
                      for k, v in sorted(by_op.items(), key=lambda kv: -kv[1]["us"])},
            "kernels": {k: v / n for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:25]}}


def kernel_times(run, iters: int) -> dict:
    """GPU time per run of every CUDA kernel ``run()`` launches (CUPTI via torch.profiler), by name."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            run()
        torch.cuda.synchronize()
    by_name: dict[str, list] = {}
    for e in prof.events():  # with CUDA activity only, each kernel / memcpy is an event of its own
        if e.device_type == DeviceType.CUDA:
            entry = by_name.setdefault(e.name, [0.0, 0])
            entry[0] += e.time_range.elapsed_us()
            entry[1] += 1
    total = sum(v[0] for v in by_name.values()) / iters
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:30]
    return {"gpu_us_per_run": total, "kernels": {k[:120]: {"us": v[0] / iters, "launches": v[1] / iters} for k, v in top}}


def _interleaved(a, sessions: dict, record: dict, save) -> None:
    from bench_onnxruntime import _ids
    for m in a.ms:
        ids = _ids(m, "cpu", seed=10 + m).numpy()
        iters = a.iters if m < 1024 else max(10, a.iters // 3)
        times = {name: [] for name in sessions}
        for _ in range(a.rounds):
            for name, sess in sessions.items():  # A B A B ...: both see the same GPU state
                times[name].append(sess.time(ids, iters)[0])
        names = list(sessions)
        row = {"ms": times}
        if len(names) == 2:
            ratios = [x / y for x, y in zip(times[names[0]], times[names[1]])]
            row[f"{names[0]}/{names[1]}"] = {"per_round": ratios, "median": statistics.median(ratios),
                                             "min": min(ratios), "max": max(ratios)}
        record["interleaved"][str(m)] = row
        print(f"  M={m}: " + "; ".join(f"{k} {', '.join(f'{t:.3f}' for t in v)} ms" for k, v in times.items()), flush=True)
        save()


def _profiled(a, folder: Path, rows: list[str], record: dict, save) -> None:
    import onnxruntime as ort
    from bench_onnxruntime import _ids
    provider = _provider(a)
    for m in a.profile_ms:
        ids = _ids(m, "cpu", seed=10 + m).numpy()
        for row in rows:
            so = ort.SessionOptions()
            so.enable_profiling = True
            so.profile_file_prefix = str(folder / f"prof_{row}_M{m}")
            providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
            sess = ort.InferenceSession(str(folder / f"{row}.onnx"), so, providers=providers)
            io = sess.io_binding()
            value = ort.OrtValue.ortvalue_from_numpy(ids, "cuda" if provider.startswith("CUDA") else "cpu", 0)
            io.bind_ortvalue_input(sess.get_inputs()[0].name, value)
            for o in sess.get_outputs():
                io.bind_output(o.name, "cuda" if provider.startswith("CUDA") else "cpu", 0)
            for _ in range(5 + a.profile_iters):
                sess.run_with_iobinding(io)
            entry = {"ort": op_type_times(sess.end_profiling(), skip_runs=5)}
            if provider.startswith("CUDA"):
                try:
                    entry["gpu"] = kernel_times(lambda: sess.run_with_iobinding(io), a.profile_iters)
                except Exception as e:  # noqa: BLE001 - the ORT profile still counts
                    traceback.print_exc()
                    entry["gpu"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            record["profile"].setdefault(str(m), {})[row] = entry
            ort_ = entry["ort"]
            print(f"  profiled {row} M={m}: run {ort_.get('run_us', float('nan')):.0f} us, nodes "
                  f"{sum(v['nodes'] for v in ort_.get('by_op', {}).values())}, GPU kernels "
                  f"{entry.get('gpu', {}).get('gpu_us_per_run', float('nan')):.0f} us", flush=True)
            del sess
            save()


def main(argv=None) -> None:
    a = _args(argv)
    rows = [r for r in a.rows.split(",") if r]
    from bench_ort_decode import scratch_dir
    folder = Path(a.dir) if a.dir else scratch_dir("ort-ab-", 8)
    folder.mkdir(parents=True, exist_ok=True)
    if a.phase in ("export", "all"):
        for row in rows:
            export_row(a, row, folder)
        if a.phase == "export":
            return
    import onnxruntime as ort
    from bench_onnxruntime import _Session
    out_dir = Path(os.environ.get("OUT") or ".")
    record = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "card": torch.cuda.get_device_name() if not a.small else "cpu", "provider": _provider(a),
              "onnxruntime": ort.__version__, "torch": torch.__version__,
              "config": {k: getattr(a, k) for k in ("blocks", "hidden", "intermediate", "ms", "profile_ms", "rounds",
                                                    "iters", "profile_iters")},
              "exports": {r: json.loads((folder / f"{r}.json").read_text()) for r in rows if (folder / f"{r}.json").exists()},
              "interleaved": {}, "profile": {}}

    def save():
        (out_dir / "ort_ab_profile.json").write_text(json.dumps(record, indent=1, default=str))

    try:
        present = [r for r in rows if (folder / f"{r}.onnx").exists()]
        sessions = {r: _Session(folder / f"{r}.onnx", _provider(a)) for r in present}
        record["providers"] = {r: s.providers for r, s in sessions.items()}
        _interleaved(a, sessions, record, save)
        del sessions
        _profiled(a, folder, present, record, save)
    finally:
        save()
        if not a.dir:
            shutil.rmtree(folder, ignore_errors=True)
    _report(record)


def _report(record: dict) -> None:
    print(f"\n{record['card']}, ONNX Runtime {record['onnxruntime']} {record['provider']}; {record['config']}")
    for m, row in record["interleaved"].items():
        for name, ts in row["ms"].items():
            print(f"  M={m:>5} {name:<6} median {statistics.median(ts):8.3f} ms  (rounds: "
                  f"{', '.join(f'{t:.3f}' for t in ts)})")
        for k, v in row.items():
            if "/" in k:
                print(f"  M={m:>5} {k}: median {v['median']:.3f}, range {v['min']:.3f}-{v['max']:.3f} "
                      f"(= {k.split('/')[1]}'s speed x {k.split('/')[0]}; < 1: slower)")
    for m, by_row in record["profile"].items():
        keys = sorted({k for e in by_row.values() for k in e["ort"].get("by_op", {})},
                      key=lambda k: -max(e["ort"].get("by_op", {}).get(k, {}).get("us", 0) for e in by_row.values()))
        print(f"\n  M={m}: ORT profiler, us per run by op type (nodes)")
        print("  " + f"{'op@EP':<34}" + "".join(f"{r:>20}" for r in by_row))
        for k in keys:
            cells = ""
            for e in by_row.values():
                v = e["ort"].get("by_op", {}).get(k)
                cells += f"{v['us']:>14.1f} ({v['nodes']:>3})" if v else f"{'-':>20}"
            print(f"  {k:<34}{cells}")
        print("  " + f"{'model_run (median)':<34}" + "".join(f"{e['ort'].get('run_us', float('nan')):>20.1f}" for e in by_row.values()))
        if any("gpu" in e and "kernels" in e["gpu"] for e in by_row.values()):
            print(f"  M={m}: GPU kernel time per run (CUPTI): " + ", ".join(
                f"{r} {e['gpu'].get('gpu_us_per_run', float('nan')):.1f} us" for r, e in by_row.items() if "gpu" in e))
            for r, e in by_row.items():
                for name, v in list(e.get("gpu", {}).get("kernels", {}).items())[:8]:
                    print(f"    {r:<6}{v['us']:>9.1f} us {v['launches']:>5.0f}x  {name[:90]}")


if __name__ == "__main__":
    main()
