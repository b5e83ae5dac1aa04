"""Peak memory and time of quantize-while-loading: qcompiler.from_pretrained vs fp16 and bitsandbytes.

On the GPU machine (one run, rows side by side; JSON written to $OUT after every row):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/bench_memory.py

A Llama with 8B shapes (hidden 4096, MLP 14336, 32 layers, 32 heads, 8 KV heads, vocab 128256),
random weights (std 0.02; 4 residual dims x20 in every RMSNorm weight, so outlier features exist)
is written to local disk as fp16 safetensors shards, one shard at a time. Rows:

* ``fp16``: transformers ``from_pretrained(dtype=float16, device_map=cuda)``: the baseline bytes;
* ``qcompiler <scheme>``: ``qcompiler.from_pretrained`` (peak GPU memory / fp16 bytes);
* ``bnb 8bit`` / ``bnb 4bit``: transformers with ``BitsAndBytesConfig`` on the same checkpoint;
* ``save + load``: ``qcompiler.save`` then ``qcompiler.load(dir)`` (no float model) of the int8 model;
* ``check <scheme>``: on the first ``--check-layers`` layers, ``from_pretrained`` vs ``compile()`` of
  the fp16 model on the same calibration data (max |logit difference|, cosine).

``--tiny`` runs every row on a small config (CPU if there is no GPU) to test the script.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qcompiler  # noqa: E402
from qcompiler.memory_usage import PeakMemory, storage_bytes  # noqa: E402

GIB = 2**30


def llama_config(tiny: bool, layers: int | None):
    from transformers import LlamaConfig

    if tiny:
        cfg = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=512)
    else:
        cfg = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256)
    if layers:
        cfg["num_hidden_layers"] = layers
    return LlamaConfig(max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=False, **cfg)


def write_checkpoint(cfg, root: Path, device: torch.device, shard_bytes: int = 2 * GIB) -> float:
    """Random fp16 weights, generated tensor by tensor on ``device`` and written a shard at a time."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    with init_empty_weights():
        skeleton = LlamaForCausalLM(cfg)
    g = torch.Generator(device=device).manual_seed(0)
    outlier_dims = torch.tensor([7, 1000 % cfg.hidden_size, 2047 % cfg.hidden_size, 3001 % cfg.hidden_size])
    shard: dict[str, torch.Tensor] = {}
    size, files, weight_map = 0, [], {}

    def flush():
        nonlocal shard, size
        name = f"part-{len(files):05d}.safetensors"
        save_file(shard, str(root / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for name, p in skeleton.state_dict().items():
        if name.endswith("norm.weight"):
            t = torch.ones(p.shape, dtype=torch.float16)
            t[outlier_dims] = 20.0
        else:
            t = (torch.randn(p.shape, generator=g, device=device, dtype=torch.float16) * 0.02).cpu()
        shard[name] = t
        size += t.numel() * 2
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    final = {}
    for i, f in enumerate(files):  # the names save_pretrained uses
        new = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        os.replace(root / f, root / new)
        final[f] = new
    weight_map = {k: final[v] for k, v in weight_map.items()}
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg.torch_dtype = torch.float16
    cfg.save_pretrained(str(root))
    return time.perf_counter() - t0


def fewer_layers(src: Path, dst: Path, cfg, layers: int) -> Path:
    """A checkpoint directory for the first ``layers`` layers: same shards (linked), smaller config."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.suffix == ".safetensors" or p.name.endswith(".index.json"):
            target = dst / p.name
            if not target.exists():
                os.symlink(p, target)
    small = llama_config(False, layers) if cfg.hidden_size == 4096 else llama_config(True, layers)
    small.torch_dtype = torch.float16
    small.save_pretrained(str(dst))
    return dst


def cleanup():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def measured(fn, device):
    cleanup()
    with PeakMemory(device) as pm:
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return out, dt, pm


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small config, to test the script (CPU if no GPU)")
    ap.add_argument("--dir", default="/tmp/qc_bench_llama8b", help="where the checkpoint is written")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_memory_out"))
    ap.add_argument("--rows", default="fp16,int8-outlier,w4-weight-only,bnb8,bnb4,saveload,check,gptq-w4")
    ap.add_argument("--calib", type=int, default=2, help="calibration sequences")
    ap.add_argument("--seq", type=int, default=128, help="tokens per calibration sequence")
    ap.add_argument("--gptq-layers", type=int, default=8, help="layers of the gptq-w4 row (GPTQ is slow)")
    ap.add_argument("--check-layers", type=int, default=2, help="layers of the compile() comparison")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip rows once this much time has passed")
    args = ap.parse_args()
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = llama_config(args.tiny, None)
    root = Path(args.dir + ("_tiny" if args.tiny else ""))
    result = {"card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__, "config": cfg.to_dict(),
              "argv": sys.argv[1:], "rows": []}

    def emit(row):
        row["elapsed_s"] = round(time.perf_counter() - start, 1)
        result["rows"].append(row)
        (out / "bench_memory.json").write_text(json.dumps(result, indent=1, default=str))
        print(json.dumps(row, default=str), flush=True)

    if not (root / "config.json").is_file():
        dt = write_checkpoint(cfg, root, device)
        emit({"row": "write checkpoint", "s": round(dt, 1)})
    fp16_bytes = sum(p.stat().st_size for p in root.glob("*.safetensors"))
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, cfg.vocab_size, (1, args.seq), generator=g) for _ in range(args.calib)]
    prompt = torch.randint(0, cfg.vocab_size, (1, 32), generator=g).to(device)
    rows = args.rows.split(",")
    kept = {}

    def want(name):
        if name not in rows:
            return False
        if time.perf_counter() - start > args.budget_s:
            emit({"row": name, "skipped": f"time budget {args.budget_s}s spent"})
            return False
        return True

    if want("fp16"):
        from transformers import AutoModelForCausalLM
        m, dt, pm = measured(lambda: AutoModelForCausalLM.from_pretrained(str(root), dtype=torch.float16,
                                                                          device_map=str(device)), device)
        fp16_bytes = storage_bytes(m)
        emit({"row": "fp16 (transformers)", "load_s": round(dt, 2), "peak_gpu_gib": (pm.device_bytes or 0) / GIB,
              "model_gib": fp16_bytes / GIB, "peak_over_fp16": (pm.device_bytes or 0) / fp16_bytes,
              "peak_host_gib": pm.host_bytes / GIB})
        del m
    for scheme in ("int8-outlier", "w4-weight-only"):
        if not want(scheme):
            continue
        data = calib if scheme == "int8-outlier" else None
        qm, dt, pm = measured(lambda: qcompiler.from_pretrained(str(root), scheme=scheme, calibration_data=data,
                                                                device=device, dtype=torch.float16,
                                                                progress=False), device)
        mem = qm.report().memory
        emit({"row": f"qcompiler {scheme}", "quantize_s": round(dt, 2), "peak_gpu_gib": (pm.device_bytes or 0) / GIB,
              "peak_over_fp16": (pm.device_bytes or 0) / fp16_bytes, "model_gib": mem.bytes_after / GIB,
              "model_over_fp16": mem.bytes_after / fp16_bytes, "peak_host_gib": pm.host_bytes / GIB,
              "host_start_gib": pm.host_start / GIB})
        if scheme == "int8-outlier" and "saveload" in rows:
            kept["int8"] = (qm, logits(qm, prompt))
        del qm
    for bits in ("8", "4"):
        if not want(f"bnb{bits}"):
            continue
        try:
            from transformers import AutoModelForCausalLM, BitsAndBytesConfig
            bnb = BitsAndBytesConfig(load_in_8bit=True) if bits == "8" else \
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_quant_type="nf4")
            m, dt, pm = measured(lambda: AutoModelForCausalLM.from_pretrained(
                str(root), dtype=torch.float16, device_map=str(device), quantization_config=bnb), device)
            emit({"row": f"bitsandbytes load_in_{bits}bit", "quantize_s": round(dt, 2),
                  "peak_gpu_gib": (pm.device_bytes or 0) / GIB, "peak_over_fp16": (pm.device_bytes or 0) / fp16_bytes,
                  "model_gib": storage_bytes(m) / GIB, "peak_host_gib": pm.host_bytes / GIB})
            del m
        except Exception as e:  # noqa: BLE001 - a peer missing or failing is a row, not the end of the run
            emit({"row": f"bitsandbytes load_in_{bits}bit", "error": f"{type(e).__name__}: {str(e)[:300]}"})
    if want("saveload") and "int8" in kept:
        qm, ref = kept.pop("int8")
        saved = root.parent / (root.name + "_int8")
        shutil.rmtree(saved, ignore_errors=True)
        _, t_save, _ = measured(lambda: qcompiler.save(qm, saved), device)
        del qm
        loaded, t_load, pm = measured(lambda: qcompiler.load(saved, device=device), device)
        same = torch.equal(logits(loaded, prompt), ref)
        emit({"row": "qcompiler int8-outlier save + load(dir)", "save_s": round(t_save, 2), "load_s": round(t_load, 2),
              "peak_gpu_gib": (pm.device_bytes or 0) / GIB, "peak_over_fp16": (pm.device_bytes or 0) / fp16_bytes,
              "saved_gib": sum(p.stat().st_size for p in saved.glob("*.safetensors")) / GIB,
              "bit_exact_with_saved": same, "peak_host_gib": pm.host_bytes / GIB})
        del loaded
        shutil.rmtree(saved, ignore_errors=True)
    if want("check"):
        from transformers import AutoModelForCausalLM
        small = fewer_layers(root, root.parent / (root.name + f"_{args.check_layers}l"), cfg, args.check_layers)
        float_model = AutoModelForCausalLM.from_pretrained(str(small), dtype=torch.float16,
                                                           device_map=str(device)).eval()
        calib_dev = [c.to(device) for c in calib]
        for scheme in ("int8-outlier", "w4-weight-only", "gptq-w4"):
            data = None if scheme == "w4-weight-only" else calib_dev
            ex = None if data is not None else prompt
            streamed = qcompiler.from_pretrained(str(small), scheme=scheme, calibration_data=data,
                                                 example_inputs=ex, device=device, progress=False,
                                                 calibrate_on="float")
            compiled = qcompiler.compile(float_model, scheme=scheme, calibration_data=data, example_inputs=ex,
                                         progress=False)
            a, b, f = logits(streamed, prompt), logits(compiled, prompt), logits(float_model, prompt)
            cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
            emit({"row": f"check {scheme} ({args.check_layers} layers)", "max_abs_diff_vs_compile": (a - b).abs().max().item(),
                  "cosine_vs_compile": cos, "rel_err_vs_float_streamed": ((a - f).norm() / f.norm()).item(),
                  "rel_err_vs_float_compile": ((b - f).norm() / f.norm()).item()})
            del streamed, compiled
        del float_model
    args.gptq_layers = min(args.gptq_layers, cfg.num_hidden_layers)
    if want("gptq-w4"):
        small = fewer_layers(root, root.parent / (root.name + f"_{args.gptq_layers}l"), cfg, args.gptq_layers)
        qm, dt, pm = measured(lambda: qcompiler.from_pretrained(str(small), scheme="gptq-w4", calibration_data=calib,
                                                                device=device, progress=False), device)
        mem = qm.report().memory
        emit({"row": f"qcompiler gptq-w4 ({args.gptq_layers} layers)", "quantize_s": round(dt, 2),
              "peak_gpu_gib": (pm.device_bytes or 0) / GIB, "fp16_gib_of_these_layers": mem.bytes_before / GIB,
              "peak_over_fp16": (pm.device_bytes or 0) / mem.bytes_before, "model_gib": mem.bytes_after / GIB,
              "model_over_fp16": mem.bytes_after / mem.bytes_before})
        del qm
    print("done in", round(time.perf_counter() - start, 1), "s")


if __name__ == "__main__":
    main()
