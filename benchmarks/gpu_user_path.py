"""The GPU user path in fresh processes: compile -> qm.generate() (fast path) -> save, then
load(dir) without the float model -> generate, and the same tokens as the eager path.

    python benchmarks/gpu_user_path.py --out results.json            # runs both stages
    python benchmarks/gpu_user_path.py --stage build --dir D          # one stage (what the driver calls)

A small Llama (hidden 1024, 2 layers, random weights, fp16) so each scheme takes seconds; the point is
the path, not the speed. Each scheme's record: generate_path, tokens equal across fast / eager / reloaded,
max |logits diff| reloaded vs saved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

SCHEMES = tuple(os.environ.get("QC_USER_SCHEMES", "w4-weight-only,int8-outlier,nf4").split(","))
CUDA = torch.cuda.is_available()  # off CUDA (a dry run of this script): eager backend, a tiny model
DEVICE, BACKEND, HIDDEN = ("cuda", "triton", 1024) if CUDA else ("cpu", "eager", 128)


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=HIDDEN, intermediate_size=HIDDEN * 11 // 4, num_hidden_layers=2,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512)
    model = LlamaForCausalLM(config).eval()
    return model.half().cuda() if CUDA else model


def build(directory: Path) -> dict:
    import qcompiler
    from qcompiler.runtime import disable_fast_generate, generate_path
    model = small_llama()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32000, (1, 24), generator=g).to(DEVICE)
    calib = [dict(input_ids=torch.randint(0, 32000, (2, 32), generator=g).to(DEVICE)) for _ in range(2)]
    out = {}
    for scheme in SCHEMES:
        t0 = time.perf_counter()
        qm = qcompiler.compile(model, scheme, calib, backend=BACKEND)
        with torch.no_grad():
            fast = qm.generate(ids, max_new_tokens=24, do_sample=False)
            path = generate_path(qm)
            logits = qm(input_ids=ids).logits.float()
        qcompiler.save(qm, directory / scheme)
        disable_fast_generate(qm)
        with torch.no_grad():
            eager = qm.generate(ids, max_new_tokens=24, do_sample=False)
        torch.save(dict(ids=ids.cpu(), fast=fast.cpu(), logits=logits.cpu()), directory / f"{scheme}.pt")
        same = (fast == eager)[0].long().cumprod(0).sum().item()  # leading tokens equal (fp16 may diverge late)
        out[scheme] = dict(generate_path=path, fast_equals_eager=bool(torch.equal(fast, eager)),
                           leading_tokens_equal=f"{same}/{fast.shape[1]}",
                           build_s=round(time.perf_counter() - t0, 1))
        print(scheme, out[scheme], flush=True)
    return out


def reload(directory: Path) -> dict:
    import qcompiler
    from qcompiler.runtime import generate_path
    out = {}
    for scheme in SCHEMES:
        ref = torch.load(directory / f"{scheme}.pt")
        t0 = time.perf_counter()
        qm = qcompiler.load(directory / scheme, device=DEVICE)
        ids = ref["ids"].to(DEVICE)
        with torch.no_grad():
            toks = qm.generate(ids, max_new_tokens=24, do_sample=False)
            logits = qm(input_ids=ids).logits.float().cpu()
        out[scheme] = dict(generate_path=generate_path(qm), tokens_equal_saved=bool(torch.equal(toks.cpu(), ref["fast"])),
                           max_abs_logits_diff=float((logits - ref["logits"]).abs().max()),
                           load_s=round(time.perf_counter() - t0, 1),
                           peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if CUDA else None)
        print(scheme, out[scheme], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=("build", "reload"))
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.stage:
        result = (build if args.stage == "build" else reload)(args.dir)
        (args.dir / f"{args.stage}.json").write_text(json.dumps(result, indent=1))
        return
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="qc-user-"))
    record = {}
    for stage in ("build", "reload"):  # each in a fresh process: nothing carries over but the files
        rc = subprocess.run([sys.executable, __file__, "--stage", stage, "--dir", str(d)]).returncode
        record[stage] = json.loads((d / f"{stage}.json").read_text()) if rc == 0 else dict(rc=rc)
        if args.out:
            args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    if any("rc" in r for r in record.values()):
        sys.exit(1)  # a stage failed: run_generate_gpu.sh's "user rc" says so


if __name__ == "__main__":
    main()
