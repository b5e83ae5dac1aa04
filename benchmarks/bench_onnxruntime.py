"""ONNX Runtime latency of a Llama-architecture block stack: qcompiler's exports vs the fp16
export of the same model vs ONNX Runtime's own quantizer, in one run.

The model: ``LlamaModel`` with random weights (4 decoder blocks, hidden 4096, MLP 11008, 32
heads by default), 8 embedding columns scaled x20 so the projections see LLM.int8()'s outlier
features (RMSNorm keeps them), called with ``use_cache=False`` on one sequence of M tokens
(M = 1, 16, 2048: every linear runs at that M; attention over M tokens is included, the same
in every row). Rows, each an ONNX file run with the same execution provider:

* ``fp16``          ``export_float_onnx`` of the model in fp16 (fp32 with ``--small``): the baseline;
* ``qc ort-cuda``   int8-outlier, target ``ort-cuda``: MatMulNBits 8-bit weight-only on the scheme's
                    int8 weights; per layer, the static outlier columns folded into the 8-bit weight
                    where that adds less error than the scheme's X rounding on the example, else
                    kept as an exact fp16 product (``outliers=auto``);
* ``qc ort-cuda-fold`` / ``-keep``  every layer folded / every layer kept (extra targets registered
                    here: ``lower-ort-matmul-nbits{outliers=fold|keep}``);
* ``qc ort-cuda fpA_intB``  with ORT's CUTLASS weight-only GEMM switched on
                    (``ORT_FPA_INTB_GEMM=1`` / session config ``ep.cuda.fpa_intb_gemm``);
* ``qc generic``    int8-outlier, target ``generic``: MatMulInteger int8 x int8 (the 5x slower op);
* ``qc ort-cpu``    int8-outlier, target ``ort-cpu`` (uint8 MatMulInteger; CPU runs only);
* ``ort qdyn``      ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights) of the fp32 export.

Time: median wall time of ``session.run_with_iobinding`` with inputs and outputs bound on the
device (ORT synchronizes its stream before returning), after 5 warm-up runs; 50 runs (16 at
M >= 1024; fewer, at least 3, when a run takes long). ``err``: relative L2 error of ``last_hidden_state`` against the fp16 (``--small``:
fp32) export. Each variant is exported, timed and deleted in turn, and the JSON
(``$OUT/bench_onnxruntime.json``, or ``--out``) is rewritten after each, so a run cut short
keeps what it measured. ``--check`` also runs ``onnx.checker`` on each file (the tests do).

    PYTHONPATH=. python benchmarks/bench_onnxruntime.py            # GPU: CUDA EP, needs onnxruntime-gpu
    PYTHONPATH=. python benchmarks/bench_onnxruntime.py --small    # CPU EP, small sizes (a smoke test)
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

__all__ = ["main"]

N_OUTLIERS, OUTLIER_SCALE = 8, 20.0


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="CPU EP, hidden 256, 2 blocks, M = 1, 16, 128, fp32")
    p.add_argument("--blocks", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--ms", help="comma-separated token counts, default 1,16,2048")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--variants", help="comma-separated subset of the rows (default: all that apply)")
    p.add_argument("--out", help="folder for the JSON (default $OUT, else the working directory)")
    p.add_argument("--check", action="store_true", help="run onnx.checker on every file (slow on big models)")
    a = p.parse_args(argv)
    small = dict(blocks=2, hidden=256, intermediate=688, ms="1,16,128")
    large = dict(blocks=4, hidden=4096, intermediate=11008, ms="1,16,2048")
    for k, v in (small if a.small else large).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.ms = [int(m) for m in a.ms.split(",")]
    return a


def _model(a, device, dtype):
    from transformers import LlamaConfig, LlamaModel
    torch.manual_seed(0)
    heads = max(1, a.hidden // 128)
    cfg = LlamaConfig(vocab_size=512, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_hidden_layers=a.blocks, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max(4096, max(a.ms)))
    model = LlamaModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    cols = torch.randperm(a.hidden, generator=g)[:N_OUTLIERS]
    with torch.no_grad():
        model.embed_tokens.weight[:, cols] *= OUTLIER_SCALE
    return model.to(device=device, dtype=dtype), cols.tolist()


def _ids(m, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 512, (1, m), generator=g).to(device)


def _file(folder: Path, name: str) -> Path:
    return folder / (name.replace(" ", "_") + ".onnx")


class _Session:
    """An InferenceSession with inputs/outputs bound on the execution provider's device."""

    def __init__(self, path, provider, config=None):
        import onnxruntime as ort
        so = ort.SessionOptions()
        for k, v in (config or {}).items():
            so.add_session_config_entry(k, v)
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        self.s = ort.InferenceSession(str(path), so, providers=providers)
        self.device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self.providers = self.s.get_providers()

    def bind(self, ids: np.ndarray):
        import onnxruntime as ort
        io = self.s.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(ids, self.device, 0)
        io.bind_ortvalue_input(self.s.get_inputs()[0].name, value)
        for o in self.s.get_outputs():
            io.bind_output(o.name, self.device, 0)
        return io, value

    def time(self, ids: np.ndarray, iters: int) -> tuple[float, np.ndarray]:
        """Median ms over ``iters`` runs after 5 warm-ups; fewer (at least 3) when one run takes
        long (ORT's quantizer output falls back to the CPU on the CUDA EP): ~3 s per point."""
        io, _keep = self.bind(ids)
        t = time.perf_counter()
        self.s.run_with_iobinding(io)
        first = time.perf_counter() - t
        for _ in range(4 if first < 0.2 else 1):
            self.s.run_with_iobinding(io)
        iters = max(3, min(iters, int(3.0 / max(first, 1e-6))))
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            self.s.run_with_iobinding(io)
            ts.append(time.perf_counter() - t)
        out = io.copy_outputs_to_cpu()[0]
        return statistics.median(ts) * 1e3, out


def _variants(a, folder: Path, provider: str):
    """``(name, export() -> info dict, session configs to run it with)`` in order; the fp16
    baseline first, ORT's quantizer last (it needs the model in fp32)."""
    import qcompiler
    from qcompiler.backends.onnxruntime import ExportTarget, export_float_onnx, register_target
    from qcompiler.backends.onnxruntime.translations import ort_table
    cuda = provider == "CUDAExecutionProvider"
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    for mode in ("fold", "keep"):  # ort-cuda itself decides per layer (outliers=auto)
        register_target(ExportTarget(
            f"ort-cuda-{mode}", f"lower-ort-matmul-nbits{{outliers={mode}}},dce,label-onnx-lowering{{matmul_nbits=true}}",
            ort_table, ("CUDAExecutionProvider", "CPUExecutionProvider"), f"ort-cuda, outliers={mode} in every layer"))
    model, cols = _model(a, device, dtype)
    example = {"input_ids": _ids(16, device)}
    compiled = []

    def qm():
        if not compiled:
            calib = [{"input_ids": _ids(64, device, seed=s)} for s in range(4)]
            compiled.append(qcompiler.compile(model, "int8-outlier", calib, progress=False))
            dims = sorted({len(r.outlier_dims or []) for r in compiled[0].report().quantized})
            print(f"  compiled int8-outlier: outlier dims per layer {dims} (embedding columns "
                  f"x{OUTLIER_SCALE:g}: {cols})", flush=True)
        return compiled[0]

    def float_export(name):
        export_float_onnx(model, example, _file(folder, name), check=a.check)
        return {}

    def qc_export(target):
        out = qcompiler.export_onnx(qm(), example, _file(folder, f"qc {target}"), target=target, check=a.check)
        return {"lowering": sorted(set(out.lowering.values()))}

    def qdyn():
        from onnxruntime.quantization import QuantType, quantize_dynamic
        compiled.clear()
        fp32 = folder / "fp32-for-qdyn.onnx"
        model.float()
        export_float_onnx(model, example, fp32, check=a.check)
        logging.getLogger().setLevel(logging.ERROR)  # it warns about every non-float tensor
        big = sum(p.numel() for p in model.parameters()) * 4 > 2**31 - 2**26
        quantize_dynamic(str(fp32), str(_file(folder, "ort qdyn")), weight_type=QuantType.QInt8,
                         use_external_data_format=big)
        return {}

    fpa = [{}, {"ep.cuda.fpa_intb_gemm": "1"}] if cuda else [{}]  # ORT's CUTLASS weight-only GEMM is opt-in
    base = "fp16" if cuda else "fp32"
    yield base, lambda: float_export(base), [{}]
    yield "qc ort-cuda", lambda: qc_export("ort-cuda"), fpa
    yield "qc ort-cuda-fold", lambda: qc_export("ort-cuda-fold"), [{}]
    yield "qc ort-cuda-keep", lambda: qc_export("ort-cuda-keep"), [{}]
    yield "qc generic", lambda: qc_export("generic"), [{}]
    if not cuda:
        yield "qc ort-cpu", lambda: qc_export("ort-cpu"), [{}]
    yield "ort qdyn", qdyn, [{}]


def _run(a, name, path, provider, config) -> dict:
    row = {"config": config, "ms": {}, "_out": {}}
    os.environ["ORT_FPA_INTB_GEMM"] = "1" if config else "0"
    try:
        sess = _Session(path, provider, config)
        row["providers"] = sess.providers
        for m in a.ms:
            ids = _ids(m, "cpu", seed=10 + m).numpy()
            row["ms"][m], out = sess.time(ids, a.iters if m < 1024 else max(10, a.iters // 3))
            row["_out"][m] = out.astype(np.float32)
    except Exception as e:  # noqa: BLE001 - report and go on
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        traceback.print_exc()
    finally:
        os.environ.pop("ORT_FPA_INTB_GEMM", None)
    print(f"  ran {name}: {row.get('error') or {m: round(t, 3) for m, t in row['ms'].items()}}", flush=True)
    return row


def main(argv=None) -> None:
    a = _args(argv)
    import onnxruntime as ort
    have = ort.get_available_providers()
    provider = "CPUExecutionProvider" if a.small else "CUDAExecutionProvider"
    if provider not in have:
        sys.exit(f"{provider} is not available (providers: {have}); on a CPU machine run with --small")
    try:
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter needs it
    except ImportError:
        sys.exit("onnxscript is not importable: the export needs onnxscript and onnx-ir (carry their wheels, "
                 "see docs/onnx.md)")
    only = set(a.variants.split(",")) if a.variants else None
    card = torch.cuda.get_device_name() if torch.cuda.is_available() and not a.small else "cpu"
    print(f"ONNX Runtime {ort.__version__}, {provider}, {card}; {a.blocks} Llama blocks, hidden {a.hidden}, "
          f"MLP {a.intermediate}, M = {a.ms}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-ort-"))
    base = "fp16" if provider == "CUDAExecutionProvider" else "fp32"
    results: dict[str, dict] = {}
    for name, export, configs in _variants(a, folder, provider):
        if only is not None and name not in only and name != base:
            continue
        t = time.perf_counter()
        try:
            info = {"export_s": None, **export()}
            info["export_s"] = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - one failing row must not sink the others
            traceback.print_exc()
            results[name] = {"error": f"export: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(f"  {name}: {results[name]['error']}", flush=True)
            continue
        print(f"  {name}: exported in {info['export_s']:.1f} s", flush=True)
        for config in configs:
            label = name + (" fpA_intB" if config else "")
            results[label] = {**info, **_run(a, label, _file(folder, name), provider, config)}
            _errors(results, base)
            _save(a, provider, card, base, results, ort.__version__)  # partial results survive a timeout
        for f in folder.glob(_file(folder, name).stem + "*"):
            f.unlink()  # keep the disk small: 1.6 GB per fp16 file at the default sizes
    _report(a, provider, card, base, results, ort.__version__)


def _errors(results: dict, base: str) -> None:
    ref = results.get(base, {}).get("_out", {})
    for row in results.values():
        for m, out in row.get("_out", {}).items():
            if m in ref:
                row.setdefault("err", {})[m] = float(np.linalg.norm(out - ref[m]) / np.linalg.norm(ref[m]))


def _save(a, provider, card, base, results, ort_version) -> Path:
    out_dir = Path(a.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {name: {k: v for k, v in row.items() if k != "_out"} for name, row in results.items()}
    record = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "card": card, "provider": provider,
              "onnxruntime": ort_version, "torch": torch.__version__,
              "config": {k: getattr(a, k) for k in ("blocks", "hidden", "intermediate", "ms", "iters", "small")},
              "baseline": base, "results": rows}
    path = out_dir / "bench_onnxruntime.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    return path


def _report(a, provider, card, base, results, ort_version) -> None:
    head = f"{'variant':<26}" + "".join(f"{'M=' + str(m) + ' ms':>14}{'x ' + base:>9}" for m in a.ms) + f"{'err':>9}"
    lines = [head, "-" * len(head)]
    for name, row in results.items():
        if "error" in row:
            lines.append(f"{name:<26} failed: {row['error'][:120]}")
            continue
        cells = ""
        for m in a.ms:
            t, b = row["ms"].get(m), results.get(base, {}).get("ms", {}).get(m)
            cells += f"{t:>14.3f}" if t is not None else f"{'-':>14}"
            cells += f"{b / t:>9.2f}" if t and b else f"{'-':>9}"
        errs = list(row.get("err", {}).values())
        lines.append(f"{name:<26}{cells}{max(errs) if errs else float('nan'):>9.4f}")
    path = _save(a, provider, card, base, results, ort_version)
    print()
    print(f"{card}, ONNX Runtime {ort_version} {provider}; {a.blocks} Llama blocks hidden {a.hidden}, median ms "
          f"(x {base} = speed relative to the {base} export; err = rel. L2 vs the {base} export, worst M)")
    print("\n".join(lines))
    for name, row in results.items():
        if row.get("lowering"):
            print(f"  {name}: {'; '.join(row['lowering'])}")
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
