"""End to end on the GPU: a Llama-architecture model of about 1.1B parameters (TinyLlama's shape,
random weights, fp16), prefill and decode throughput for fp16, bitsandbytes LLM.int8() and
qcompiler int8-outlier with the Triton backend - side by side in one run on one card.

    PYTHONPATH=.:$PYTHONPATH python benchmarks/bench_e2e_llama.py [--layers 22] [--prefill 2048] [--decode 64]

Random weights have no outlier features, so every method runs with (almost) no outlier columns;
the timing is what the comparison is about. Full numbers go to $OUT/e2e_llama.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn


def build(layers: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    return model.half().eval()


def to_bnb(model: nn.Module, threshold: float) -> nn.Module:
    import bitsandbytes as bnb
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and child_name != "lm_head":
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                          has_fp16_weights=False, threshold=threshold)
                new.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
                if child.bias is not None:
                    new.bias = nn.Parameter(child.bias.data)
                setattr(mod, child_name, new.cuda())
    return model


def timed(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


@torch.no_grad()
def measure(model, prefill: int, decode: int, reps: int) -> dict:
    ids = torch.randint(3, 32000, (1, prefill), device="cuda")
    t_prefill = timed(lambda: model(input_ids=ids, use_cache=False), reps)
    prompt = ids[:, :16]
    gen = lambda: model.generate(prompt, max_new_tokens=decode, min_new_tokens=decode, do_sample=False)  # noqa: E731
    t_gen = timed(gen, max(1, reps // 2))
    t_first = timed(lambda: model.generate(prompt, max_new_tokens=1, min_new_tokens=1, do_sample=False), reps)
    return {"prefill_tok_s": prefill / t_prefill, "prefill_ms": t_prefill * 1e3,
            "decode_tok_s": (decode - 1) / max(t_gen - t_first, 1e-9), "generate_ms": t_gen * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import qcompiler

    card = torch.cuda.get_device_name()
    results: dict[str, dict] = {}
    model = build(args.layers)
    params = sum(p.numel() for p in model.parameters())
    print(f"{card}, torch {torch.__version__}, Llama {params / 1e9:.2f}B params, {args.layers} layers, fp16")
    results["fp16"] = measure(model, args.prefill, args.decode, args.reps)
    print("fp16", results["fp16"], flush=True)

    calib = [{"input_ids": torch.randint(3, 32000, (1, 256), device="cuda")} for _ in range(2)]
    start = time.perf_counter()
    try:
        qm = qcompiler.compile(model, "int8-outlier", calib, backend="triton", progress=False)
        compile_s = time.perf_counter() - start
        results["qcompiler int8-outlier (triton)"] = measure(qm, args.prefill, args.decode, args.reps)
        results["qcompiler int8-outlier (triton)"]["compile_s"] = compile_s
        lowerings = sorted({r.lowering for r in qm.report().layers})
        print("qcompiler", results["qcompiler int8-outlier (triton)"], "lowerings:", lowerings, flush=True)
        del qm
    except Exception as e:  # noqa: BLE001 - a benchmark reports what failed and goes on
        results["qcompiler int8-outlier (triton)"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print("qcompiler failed:", e, flush=True)
    torch.cuda.empty_cache()

    try:
        bnb_model = to_bnb(model, threshold=6.0)
        results["bitsandbytes int8 t=6"] = measure(bnb_model, args.prefill, args.decode, max(2, args.reps // 2))
        print("bnb", results["bitsandbytes int8 t=6"], flush=True)
    except Exception as e:  # noqa: BLE001
        results["bitsandbytes int8 t=6"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print("bnb failed:", e, flush=True)

    base = results["fp16"]
    print(f"\n| method ({card}) | prefill tok/s | x fp16 | decode tok/s | x fp16 |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | {r['error'][:60]} | | | |")
            continue
        print(f"| {name} | {r['prefill_tok_s']:.0f} | {r['prefill_tok_s'] / base['prefill_tok_s']:.2f} | "
              f"{r['decode_tok_s']:.1f} | {r['decode_tok_s'] / base['decode_tok_s']:.2f} |")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "e2e_llama.json"), "w") as f:
            json.dump({"card": card, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
