"""Compile all-MiniLM-L6-v2 with int8-outlier, export it to ONNX, run it in ONNX Runtime.

Writes ``minilm-int8-outlier.onnx`` (standard ONNX operators: MatMulInteger for the int8 part,
a float MatMul for the outlier columns) and ``minilm-int8-outlier-cuda.onnx`` (the ``ort-cuda``
target: MatMulNBits 8-bit weight-only) to a temporary folder, runs both with ONNX Runtime's CPU
execution provider, and compares their sentence embeddings with the fp32 model's and the eager
compiled model's, next to ONNX Runtime's own quantizer (``quantize_dynamic``) on the fp32 export.

    python examples/export_onnx.py
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

import qcompiler
from qcompiler.backends.onnxruntime import OrtModule, export_float_onnx
from qcompiler.models import CALIBRATION_SENTENCES, EVAL_SENTENCES, load_minilm


def cosine(a: torch.Tensor, b: torch.Tensor) -> str:
    c = (a * b).sum(-1)
    return f"mean {c.mean():.5f}  min {c.min():.5f}"


def main() -> None:
    minilm = load_minilm()
    calib = minilm.encode(CALIBRATION_SENTENCES, batch_size=16)
    evaluation = minilm.encode(EVAL_SENTENCES, batch_size=16)  # batches of other lengths than calib
    qm = qcompiler.compile(minilm.model, "int8-outlier", calib, progress=False)
    folder = Path(tempfile.mkdtemp(prefix="qcompiler-example-"))

    start = time.perf_counter()
    out = qcompiler.export_onnx(qm, evaluation[0], folder / "minilm-int8-outlier.onnx", target="ort-cpu")
    cuda = qcompiler.export_onnx(qm, evaluation[0], folder / "minilm-int8-outlier-cuda.onnx", target="ort-cuda")
    print(f"exported in {time.perf_counter() - start:.1f} s to {folder}")
    print(f"  inputs {out.input_names} -> outputs {out.output_names}, "
          f"{out.path.stat().st_size / 2**20:.1f} MiB")
    layer = "encoder.layer.0.intermediate.dense"
    print(f"  {layer}: ort-cpu {out.lowering[layer]!r}, ort-cuda {cuda.lowering[layer]!r}")

    # ONNX Runtime's own int8 quantizer, on the fp32 export of the same model
    from onnxruntime.quantization import QuantType, quantize_dynamic
    call = export_float_onnx(minilm.model, evaluation[0], folder / "minilm-fp32.onnx")
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic warns about every non-float tensor
    quantize_dynamic(str(folder / "minilm-fp32.onnx"), str(folder / "minilm-qdq.onnx"), weight_type=QuantType.QInt8)
    peer = type(out)(folder / "minilm-qdq.onnx", "peer", call, {}, False)

    cpu = ["CPUExecutionProvider"]
    fp32 = minilm.embed(minilm.model, evaluation)
    rows = [("qcompiler int8-outlier, eager torch", qm),
            ("qcompiler int8-outlier, ONNX Runtime", OrtModule(out, cpu)),
            ("qcompiler ort-cuda (MatMulNBits), ORT CPU", OrtModule(cuda, cpu)),
            ("ORT quantize_dynamic (QInt8)", OrtModule(peer, cpu))]
    print(f"\nsentence-embedding cosine to fp32 on {len(EVAL_SENTENCES)} held-out sentences:")
    for name, model in rows:
        print(f"  {name:<42} {cosine(minilm.embed(model, evaluation), fp32)}")
    print()
    print(qm.report())


if __name__ == "__main__":
    main()
