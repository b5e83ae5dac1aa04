"""Where the KV-cache export of the ~1B Llama goes (the fp16 file of ``bench_ort_decode.py``, which
took 102 s for 16 blocks on the H200 machine): seconds per export stage (``export_stages.py``) for
``--blocks`` 1, 2, 4, ... on this machine's CPU, so the per-block and the per-byte parts can be told
apart. The model is built on the CPU in ``--dtype`` (float16 by default, as on the GPU); the file goes
to ``--dir`` (default: /dev/shm when it has room).

    PYTHONPATH=.:benchmarks python benchmarks/profile_ort_export.py --blocks 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

__all__ = ["main"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", default="1,2,4")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--dir")
    p.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto")
    a = p.parse_args(argv)
    from bench_ort_decode import _args, _model, scratch_dir
    from export_stages import export_stages
    from qcompiler.backends.onnxruntime.kv_cache import export_float_onnx_with_cache
    rows = []
    for blocks in (int(b) for b in a.blocks.split(",")):
        folder = Path(a.dir) if a.dir else scratch_dir("export-profile-", 8)
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        model = _model(_args(["--blocks", str(blocks)]), "cpu", getattr(torch, a.dtype))
        build = time.perf_counter() - t
        ext = {"auto": None, "yes": True, "no": False}[a.external_data]
        t = time.perf_counter()
        with export_stages() as stages:
            export_float_onnx_with_cache(model, folder / "m.onnx", check=False, external_data=ext)
        total = time.perf_counter() - t
        mb = sum(f.stat().st_size for f in folder.glob("m.onnx*")) / 2**20
        rows.append({"blocks": blocks, "build_s": build, "export_s": total, "file_mib": mb, **stages})
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
        del model
        for f in folder.glob("m.onnx*"):
            f.unlink()
        if not a.dir:
            shutil.rmtree(folder, ignore_errors=True)
    keys = ["eager runs", "torch.export", "decompose", "translate", "fold", "save"]
    print(f"\n{'blocks':>6}{'file MiB':>10}{'export s':>10}" + "".join(f"{k:>14}" for k in keys))
    for r in rows:
        print(f"{r['blocks']:>6}{r['file_mib']:>10.0f}{r['export_s']:>10.1f}" + "".join(f"{r.get(k, 0):>14.1f}" for k in keys))
    out = Path(os.environ.get("OUT") or ".")
    (out / "profile_ort_export.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
