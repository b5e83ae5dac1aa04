"""End-to-end decode in ONNX Runtime: greedy ``generate`` tok/s of a ~1B Llama (the shape of
Llama-3.2-1B: hidden 2048, 16 blocks, 32 heads / 8 KV heads, MLP 8192, vocab 128256, tied
embeddings; random weights, 8 embedding columns x20 for LLM.int8()'s outliers), exported with
its KV cache (``qcompiler.backends.onnxruntime.kv_cache``) and run by qcompiler's
``OrtGenerator`` (I/O binding: the cache stays on the device between steps).

Rows: ``fp16`` (the uncompiled model, ``export_float_onnx_with_cache``), ``qc int8-outlier``
and ``qc w4-weight-only`` (``export_onnx_with_cache``, target ``ort-cuda``: MatMulNBits 8-/4-bit).
One prompt of ``--prompt`` tokens, batch 1. ``prefill ms``: the first call (prompt, empty cache)
+ its argmax; ``decode tok/s``: ``--new`` tokens after it, timed as generate(new + 1) - generate(1),
best of 2 after a warm-up. ``same tokens``: leading greedy tokens equal to the fp16 row's.
JSON to ``$OUT/bench_ort_decode.json`` after every row.

    PYTHONPATH=. python benchmarks/bench_ort_decode.py             # GPU, onnxruntime-gpu
    PYTHONPATH=. python benchmarks/bench_ort_decode.py --tiny      # CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import torch

__all__ = ["main"]


def _model(a, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    if a.tiny:
        cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    else:
        cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                          max_position_embeddings=4096, rope_theta=500000.0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    cols = torch.randperm(cfg.hidden_size, generator=g)[:8]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, cols.to(device)] *= 20.0
    model.generation_config.eos_token_id = None  # every row generates all tokens
    return model


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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU EP, a 2-block model (smoke test)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--rows", default="fp16,qc int8-outlier,qc w4-weight-only")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip rows that would start after this many seconds")
    a = p.parse_args(argv)
    import onnxruntime as ort

    import qcompiler
    from qcompiler.backends.onnxruntime.generate import OrtGenerator
    from qcompiler.backends.onnxruntime.kv_cache import export_float_onnx_with_cache, export_onnx_with_cache
    cuda = not a.tiny
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if cuda else ("CPUExecutionProvider",)
    card = torch.cuda.get_device_name() if cuda else "cpu"
    start = time.perf_counter()
    model = _model(a, device, dtype)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (1, a.prompt), generator=torch.Generator().manual_seed(2))
    calib = [{"input_ids": torch.randint(3, vocab, (1, 64), generator=torch.Generator().manual_seed(s)).to(device)}
             for s in range(4)]
    folder = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    record = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "card": card,
              "onnxruntime": ort.__version__, "torch": torch.__version__, "prompt": a.prompt, "new": a.new,
              "model": {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                             "num_attention_heads", "num_key_value_heads", "vocab_size")},
              "rows": {}}
    ref = None
    for row in a.rows.split(","):
        if time.perf_counter() - start > a.budget_s:
            record["rows"][row] = {"error": "skipped: time budget"}
            continue
        t = time.perf_counter()
        try:
            path = folder / (row.replace(" ", "_") + ".onnx")
            if row == "fp16":
                out = export_float_onnx_with_cache(model, path, check=False)
            else:
                scheme = row.removeprefix("qc ")
                qm = qcompiler.compile(model, scheme, calib, progress=False)
                out = export_onnx_with_cache(qm, path, target="ort-cuda" if cuda else "ort-cpu", check=False)
                del qm
            export_s = time.perf_counter() - t
            gen = OrtGenerator(out, providers)
            prefill_ms, tok_s, tokens = _time(gen, ids, a.new)
            new = tokens[0, a.prompt:]
            ref = new if ref is None else ref
            same = int((new == ref).cumprod(0).sum())
            record["rows"][row] = {"export_s": export_s, "prefill_ms": prefill_ms, "decode_tok_s": tok_s,
                                   "same_tokens": same, "providers": gen.providers,
                                   "file_mb": sum(f.stat().st_size for f in folder.glob(path.name + "*")) / 2**20}
            del gen
        except Exception as e:  # noqa: BLE001 - one failing row must not sink the others
            traceback.print_exc()
            record["rows"][row] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        for f in folder.glob("*"):
            f.unlink()
        print(f"  {row}: {record['rows'][row]}", flush=True)
        out_dir = Path(os.environ.get("OUT") or ".")
        (out_dir / "bench_ort_decode.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"\n{card}, ONNX Runtime {ort.__version__}; Llama {record['model']}; prompt {a.prompt}, {a.new} new tokens")
    print(f"{'row':<22}{'prefill ms':>12}{'decode tok/s':>14}{'x fp16':>8}{'same tok':>10}{'file MiB':>10}")
    base = record["rows"].get("fp16", {}).get("decode_tok_s")
    for name, r in record["rows"].items():
        if "error" in r:
            print(f"{name:<22} {r['error'][:100]}")
            continue
        x = r["decode_tok_s"] / base if base else float("nan")
        print(f"{name:<22}{r['prefill_ms']:>12.2f}{r['decode_tok_s']:>14.1f}{x:>8.2f}{r['same_tokens']:>10}{r['file_mb']:>10.0f}")


if __name__ == "__main__":
    main()
