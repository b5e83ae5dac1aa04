"""End-to-end decode in ONNX Runtime: greedy ``generate`` tok/s of a ~1B Llama (the shape of
Llama-3.2-1B: hidden 2048, 32 heads / 8 KV heads, MLP 8192, vocab 128256, tied embeddings;
``--blocks`` of its 16 decoder blocks; random weights, 8 embedding columns x20 for LLM.int8()'s
outliers), exported with its KV cache (``qcompiler.backends.onnxruntime.kv_cache``) and run by
qcompiler's ``OrtGenerator`` (I/O binding: the cache stays on the device between steps).

Rows: ``fp16`` (the uncompiled model, ``export_float_onnx_with_cache``), ``qc int8-outlier``
and ``qc w4-weight-only`` (``export_onnx_with_cache``, target ``ort-cuda``: MatMulNBits 8-/4-bit).
One prompt of ``--prompt`` tokens, batch 1. ``prefill ms``: the first call (prompt, empty cache)
+ its argmax; ``decode tok/s``: ``--new`` tokens after it, timed as generate(new + 1) - generate(1),
best of 2 after a warm-up. ``= torch``: leading greedy tokens equal to the same model's PyTorch
``generate(do_sample=False)`` (fp16: the HF model; qc rows: the compiled eager model), ``= fp16``:
equal to the fp16 ORT row's. JSON to ``$OUT/bench_ort_decode.json`` after every row.

Phases (the export is the slow part: 102 s for the fp16 16-block file on the H200 machine, mostly
torch.export + decomposition per block and writing the weights): ``--phase export --rows R``
writes R's file (+ its PyTorch tokens) into ``--dir``; ``--phase time`` times every file there;
``--phase all --jobs N`` exports the rows in N parallel processes, then times them one by one.

    PYTHONPATH=. python benchmarks/bench_ort_decode.py --blocks 4 --jobs 3   # GPU, onnxruntime-gpu
    PYTHONPATH=. python benchmarks/bench_ort_decode.py --tiny --jobs 3       # CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

__all__ = ["main", "scratch_dir"]

ROWS = "fp16,qc int8-outlier,qc w4-weight-only"


def scratch_dir(prefix: str, need_gb: float) -> Path:
    """A temp folder in /dev/shm when it has room (writing GBs of weights to RAM, not disk), else /tmp."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free > need_gb * 2**30 else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU EP, a 2-block model (smoke test)")
    p.add_argument("--cpu", action="store_true", help="the full-size model on the CPU EP (export timing)")
    p.add_argument("--blocks", type=int, help="decoder blocks (default 16 = the 1B model; --tiny 2)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--rows", default=ROWS)
    p.add_argument("--phase", choices=("all", "export", "time"), default="all")
    p.add_argument("--jobs", type=int, default=1, help="phase all: export the rows in this many processes at once")
    p.add_argument("--dir", help="folder of the ONNX files (default: a new scratch folder, deleted at the end)")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip rows that would start after this many seconds")
    a = p.parse_args(argv)
    a.blocks = a.blocks or (2 if a.tiny else 16)
    return a


def _model(a, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(**_model_config(a), tie_word_embeddings=True,
                      **({} if a.tiny else {"max_position_embeddings": 4096, "rope_theta": 500000.0}))
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    cols = torch.randperm(cfg.hidden_size, generator=g)[:8]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, cols.to(device)] *= 20.0
    model.generation_config.eos_token_id = None  # every row generates all tokens
    return model


def _setting(a):
    cuda = not (a.tiny or a.cpu)
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float16 if a.cpu else torch.float32)
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if cuda else ("CPUExecutionProvider",)
    return cuda, device, dtype, providers


def _prompt_ids(a, vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (1, a.prompt), generator=torch.Generator().manual_seed(2))


def _stem(row: str) -> str:
    return row.replace(" ", "_")


def export_row(a, row: str, folder: Path) -> dict:
    """Write ``row``'s KV-cache file into ``folder`` and the same model's PyTorch greedy tokens
    next to it (``<stem>.json``)."""
    import qcompiler
    from export_stages import export_stages
    from qcompiler.backends.onnxruntime.kv_cache import export_float_onnx_with_cache, export_onnx_with_cache
    cuda, device, dtype, _ = _setting(a)
    t = time.perf_counter()
    model = _model(a, device, dtype)
    vocab = model.config.vocab_size
    path = folder / (_stem(row) + ".onnx")
    info = {"row": row, "build_s": time.perf_counter() - t}
    runner = model
    if row != "fp16":
        calib = [{"input_ids": torch.randint(3, vocab, (1, 64), generator=torch.Generator().manual_seed(s)).to(device)}
                 for s in range(4)]
        c = time.perf_counter()
        runner = qcompiler.compile(model, row.removeprefix("qc "), calib, progress=False)
        info["compile_s"] = time.perf_counter() - c
    with export_stages() as stages:  # the export alone (compile's own capture uses torch.export too)
        if row == "fp16":
            export_float_onnx_with_cache(model, path, check=False, external_data=True)
        else:
            export_onnx_with_cache(runner, path, target="ort-cuda" if cuda else "ort-cpu", check=False,
                                   external_data=True)
    info["export_s"] = time.perf_counter() - t
    info["stages_s"] = dict(stages)
    info["file_mb"] = sum(f.stat().st_size for f in folder.glob(path.name + "*")) / 2**20
    try:  # the same model's greedy tokens in PyTorch: what the ORT tokens must equal
        ids = _prompt_ids(a, vocab).to(device)
        with torch.no_grad():
            out = runner.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new,
                                  do_sample=False, eos_token_id=None)
        info["torch_tokens"] = out[0, a.prompt:].tolist()
    except Exception as e:  # noqa: BLE001 - the ORT row still counts
        traceback.print_exc()
        info["torch_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    (folder / (_stem(row) + ".json")).write_text(json.dumps(info))
    return info


def _time(gen, ids, new: int) -> tuple[float, float, torch.Tensor]:
    gen.generate(ids, max_new_tokens=2)  # warm-up (kernels, allocator)
    best1 = best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        gen.generate(ids, max_new_tokens=1)
        best1 = min(best1, time.perf_counter() - t)
        t = time.perf_counter()
        out = gen.generate(ids, max_new_tokens=new + 1)
        best = min(best, time.perf_counter() - t)
    return best1 * 1e3, new / max(best - best1, 1e-9), out


def _rounded(d: dict) -> dict:
    return {k: round(v, 1) for k, v in d.items()}


def _leading_equal(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def time_rows(a, rows: list[str], folder: Path, record: dict, out_dir: Path) -> None:
    from qcompiler.backends.onnxruntime.generate import OrtGenerator
    _, _, _, providers = _setting(a)
    vocab = record["model"]["vocab_size"]
    ids = _prompt_ids(a, vocab)
    ref = None
    for row in rows:
        info_path = folder / (_stem(row) + ".json")
        if not info_path.exists():
            record["rows"].setdefault(row, {"error": "no export (see its log)"})
            continue
        info = json.loads(info_path.read_text())
        try:
            gen = OrtGenerator(folder / (_stem(row) + ".onnx"), providers)
            prefill_ms, tok_s, tokens = _time(gen, ids, a.new)
            new = tokens[0, a.prompt:a.prompt + a.new].tolist()
            ref = new if ref is None and row == "fp16" else ref
            r = {"export_s": info["export_s"], "export_stages_s": info.get("stages_s"), "file_mb": info["file_mb"], "prefill_ms": prefill_ms,
                 "decode_tok_s": tok_s, "providers": gen.providers, "tokens": new,
                 "same_as_torch": _leading_equal(new, info["torch_tokens"]) if "torch_tokens" in info else None,
                 "same_as_fp16": _leading_equal(new, ref) if ref is not None else None}
            if "torch_error" in info:
                r["torch_error"] = info["torch_error"]
            record["rows"][row] = r
            del gen
        except Exception as e:  # noqa: BLE001 - one failing row must not sink the others
            traceback.print_exc()
            record["rows"][row] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print(f"  {row}: { {k: v for k, v in record['rows'][row].items() if k != 'tokens'} }", flush=True)
        (out_dir / "bench_ort_decode.json").write_text(json.dumps(record, indent=1, default=str))


def _export_in_processes(a, rows: list[str], folder: Path, start: float) -> dict:
    """One ``--phase export`` process per row, ``--jobs`` at a time; their logs go to $OUT."""
    out_dir = Path(os.environ.get("OUT") or ".")
    base = [sys.executable, str(Path(__file__).resolve()), "--phase", "export", "--dir", str(folder),
            "--blocks", str(a.blocks), "--prompt", str(a.prompt), "--new", str(a.new)] + \
        (["--tiny"] if a.tiny else []) + (["--cpu"] if a.cpu else [])
    pending, running, status = list(rows), {}, {}
    while pending or running:
        while pending and len(running) < max(1, a.jobs):
            row = pending.pop(0)
            if time.perf_counter() - start > a.budget_s:
                status[row] = "skipped: time budget"
                continue
            log = open(out_dir / f"decode_export_{_stem(row)}.log", "w")
            running[row] = (subprocess.Popen(base + ["--rows", row], stdout=log, stderr=subprocess.STDOUT), log)
        for row, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                status[row] = proc.returncode
                print(f"  exported {row}: exit {proc.returncode} at {time.perf_counter() - start:.0f} s", flush=True)
                del running[row]
        time.sleep(0.5)
    return status


def main(argv=None) -> None:
    a = _args(argv)
    rows = [r for r in a.rows.split(",") if r]
    folder = Path(a.dir) if a.dir else scratch_dir("bench-decode-", 12)
    folder.mkdir(parents=True, exist_ok=True)
    if a.phase == "export":
        for row in rows:
            info = export_row(a, row, folder)
            print(f"  {row}: exported in {info['export_s']:.1f} s (model {info['build_s']:.1f} s, compile "
                  f"{info.get('compile_s', 0):.1f} s; stages {_rounded(info['stages_s'])}), {info['file_mb']:.0f} MiB",
                  flush=True)
        return
    import onnxruntime as ort
    cuda, device, dtype, _ = _setting(a)
    start = time.perf_counter()
    out_dir = Path(os.environ.get("OUT") or ".")
    cfg = _model_config(a)
    record = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "card": torch.cuda.get_device_name() if cuda else "cpu", "onnxruntime": ort.__version__,
              "torch": torch.__version__, "prompt": a.prompt, "new": a.new, "jobs": a.jobs, "rows": {},
              "model": cfg}
    try:
        if a.phase == "all":
            if a.jobs > 1:
                record["export_status"] = _export_in_processes(a, rows, folder, start)
            else:
                for row in rows:
                    if time.perf_counter() - start > a.budget_s:
                        record["rows"][row] = {"error": "skipped: time budget"}
                        continue
                    try:
                        export_row(a, row, folder)
                    except Exception as e:  # noqa: BLE001
                        traceback.print_exc()
                        record["rows"][row] = {"error": f"export: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            record["export_wall_s"] = time.perf_counter() - start
            print(f"  exports done in {record['export_wall_s']:.0f} s", flush=True)
        time_rows(a, rows, folder, record, out_dir)
    finally:
        if not a.dir:
            shutil.rmtree(folder, ignore_errors=True)
    _report(a, record)


def _model_config(a) -> dict:
    if a.tiny:
        return dict(hidden_size=128, num_hidden_layers=a.blocks, intermediate_size=256, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=512)
    return dict(hidden_size=2048, num_hidden_layers=a.blocks, intermediate_size=8192, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256)


def _report(a, record: dict) -> None:
    wall = f"; exports {record['export_wall_s']:.0f} s wall, {a.jobs} at a time" if "export_wall_s" in record else ""
    print(f"\n{record['card']}, ONNX Runtime {record['onnxruntime']}; Llama {record['model']}; "
          f"prompt {a.prompt}, {a.new} new tokens{wall}")
    print(f"{'row':<22}{'export s':>10}{'prefill ms':>12}{'decode tok/s':>14}{'x fp16':>8}{'= torch':>9}"
          f"{'= fp16':>8}{'file MiB':>10}")
    base = record["rows"].get("fp16", {}).get("decode_tok_s")
    for name, r in record["rows"].items():
        if "error" in r:
            print(f"{name:<22} {r['error'][:100]}")
            continue
        x = r["decode_tok_s"] / base if base else float("nan")
        print(f"{name:<22}{r['export_s']:>10.1f}{r['prefill_ms']:>12.2f}{r['decode_tok_s']:>14.1f}{x:>8.2f}"
              f"{str(r['same_as_torch']):>9}{str(r['same_as_fp16']):>8}{r['file_mb']:>10.0f}")


if __name__ == "__main__":
    main()
