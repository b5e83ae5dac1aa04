"""A model streamed over two GPUs: qcompiler.from_pretrained / load(dir) with a device_map vs one GPU.

On a 2-GPU machine (nvidia-h200-x2; one run, JSON written to $OUT after every row):

    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/bench_multi_gpu.py

The checkpoint is bench_memory.py's: a Llama with 8B shapes (hidden 4096, MLP 14336, 32 layers,
vocab 128256), random fp16 weights written to local disk as safetensors shards. For int8-outlier and
w4-weight-only, rows:

* ``1 GPU <scheme>``: ``from_pretrained(device="cuda:0")``: the reference greedy tokens and logits;
* ``2 GPU <scheme>``: ``from_pretrained(device_map=...)``, the blocks split half and half over
  cuda:0 / cuda:1 (embeddings on 0, final norm and LM head on 1), each block quantized on its GPU;
* ``2 GPU load <scheme>``: the 1-GPU model saved, then ``qcompiler.load(dir, device_map=same map)``.

Each row has the peak memory of every GPU while quantizing/loading and while generating, the
decode speed (``--new`` greedy tokens after a 32-token prompt, prefill time taken off), and
whether the greedy tokens equal the 1-GPU run's (and the max |logit difference|).

``--tiny`` runs every row on a small config to test the script; without two GPUs the map is then
``"cpu"`` for the first half and ``"disk"`` (offloaded by accelerate) for the second: the rows say
so (``"devices"``), and they are not a multi-GPU measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompiler  # noqa: E402
from bench_memory import cleanup, llama_config, write_checkpoint  # noqa: E402

GIB = 2**30


def split_map(layers: int, first, second) -> dict:
    """Blocks half on ``first``, half on ``second``; embeddings/rotary with the first, norm/head with the second."""
    half = layers // 2
    dm = {"model.embed_tokens": first, "model.rotary_emb": first}
    dm.update({f"model.layers.{i}": (first if i < half else second) for i in range(layers)})
    dm.update({"model.norm": second, "lm_head": second})
    return dm


def gpus() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def reset_peaks() -> None:
    cleanup()
    for i in gpus():
        torch.cuda.reset_peak_memory_stats(i)


def peaks() -> dict[str, float]:
    return {f"cuda:{i}": round(torch.cuda.max_memory_allocated(i) / GIB, 3) for i in gpus()}


def sync() -> None:
    for i in gpus():
        torch.cuda.synchronize(i)


def decode(model, prompt, new: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(greedy tokens, decode tok/s with the prefill's time taken off, prompt logits)."""
    with torch.no_grad():
        logits = model(prompt).logits.float().cpu()
        model.generate(prompt, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
        sync()
        t0 = time.perf_counter()
        model.generate(prompt, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        sync()
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        tokens = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        sync()
        total = time.perf_counter() - t0
    return tokens.cpu(), (new - 1) / max(total - prefill, 1e-9), logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small config, to test the script (cpu+disk without 2 GPUs)")
    ap.add_argument("--dir", default="/tmp/qc_bench_llama8b", help="where the checkpoint is (or is written)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_multi_gpu_out"))
    ap.add_argument("--schemes", default="int8-outlier,w4-weight-only")
    ap.add_argument("--new", type=int, default=64, help="greedy tokens generated per row")
    ap.add_argument("--calib", type=int, default=2, help="calibration sequences (int8-outlier)")
    ap.add_argument("--seq", type=int, default=128, help="tokens per calibration sequence")
    args = ap.parse_args()
    start = time.perf_counter()
    two = len(gpus()) >= 2
    if not two and not args.tiny:
        sys.exit(f"bench_multi_gpu needs 2 GPUs, this machine has {len(gpus())} (use --tiny to test the script)")
    first, second = (0, 1) if two else ("cpu", "disk")
    ref_device = torch.device("cuda:0" if gpus() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = llama_config(args.tiny, None)
    root = Path(args.dir + ("_tiny" if args.tiny else ""))
    device_map = split_map(cfg.num_hidden_layers, first, second)
    result = {"cards": [torch.cuda.get_device_name(i) for i in gpus()] or ["cpu"],
              "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__, "argv": sys.argv[1:],
              "devices": "2 GPUs" if two else "cpu + disk offload (NOT a multi-GPU run)",
              "device_map": device_map, "config": cfg.to_dict(), "rows": []}

    def emit(row):
        row["elapsed_s"] = round(time.perf_counter() - start, 1)
        result["rows"].append(row)
        (out / "bench_multi_gpu.json").write_text(json.dumps(result, indent=1, default=str))
        print(json.dumps(row, default=str), flush=True)

    if not (root / "config.json").is_file():
        emit({"row": "write checkpoint", "s": round(write_checkpoint(cfg, root, ref_device), 1)})
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, cfg.vocab_size, (1, args.seq), generator=g) for _ in range(args.calib)]
    prompt = torch.randint(0, cfg.vocab_size, (1, 32), generator=g).to(ref_device)
    dtype = torch.float16 if gpus() else torch.float32
    offload = Path(tempfile.mkdtemp(prefix="qc_offload_"))
    for scheme in args.schemes.split(","):
        data = calib if scheme == "int8-outlier" else None
        common = dict(scheme=scheme, calibration_data=data, dtype=dtype, progress=False)
        # 1 GPU: the reference
        reset_peaks()
        t0 = time.perf_counter()
        ref = qcompiler.from_pretrained(str(root), device=ref_device, **common)
        t_q = time.perf_counter() - t0
        q_peaks = peaks()
        reset_peaks()
        ref_tokens, ref_tps, ref_logits = decode(ref, prompt, args.new)
        emit({"row": f"1 GPU {scheme}", "quantize_s": round(t_q, 2), "peak_gib_quantize": q_peaks,
              "peak_gib_decode": peaks(), "decode_tok_s": round(ref_tps, 2),
              "model_gib": ref.report().memory.bytes_after / GIB})
        saved = root.parent / f"{root.name}_{scheme}_saved"
        shutil.rmtree(saved, ignore_errors=True)
        qcompiler.save(ref, saved)
        del ref
        # 2 GPUs: streamed over the map, then the saved model loaded over it
        for how in ("from_pretrained", "load"):
            reset_peaks()
            t0 = time.perf_counter()
            if how == "from_pretrained":
                qm = qcompiler.from_pretrained(str(root), device_map=device_map, offload_folder=str(offload / scheme),
                                               **common)
            else:
                qm = qcompiler.load(saved, device_map=device_map)
            t_q = time.perf_counter() - t0
            q_peaks = peaks()
            reset_peaks()
            tokens, tps, lg = decode(qm, prompt, args.new)
            emit({"row": f"2 GPU {'' if how == 'from_pretrained' else 'load '}{scheme}",
                  ("quantize_s" if how == "from_pretrained" else "load_s"): round(t_q, 2),
                  "peak_gib_quantize" if how == "from_pretrained" else "peak_gib_load": q_peaks,
                  "peak_gib_decode": peaks(), "decode_tok_s": round(tps, 2),
                  "greedy_equal_1gpu": torch.equal(tokens, ref_tokens),
                  "first_diff_token": next((i for i, (a, b) in enumerate(zip(tokens[0], ref_tokens[0])) if a != b), None),
                  "max_abs_logit_diff_vs_1gpu": (lg - ref_logits).abs().max().item(),
                  "hf_device_map_devices": sorted({str(v) for v in qm.model.hf_device_map.values()})})
            del qm
        shutil.rmtree(saved, ignore_errors=True)
    shutil.rmtree(offload, ignore_errors=True)
    print("done in", round(time.perf_counter() - start, 1), "s")


if __name__ == "__main__":
    main()
