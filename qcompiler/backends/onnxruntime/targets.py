"""Export targets: what a compiled program is lowered to before it is written as ONNX.

A target is a registered object: the pass pipeline run on a copy of the program, the translation
table handed to ``torch.onnx.export``, and the ONNX Runtime execution providers to open it with.

=========  =====================================================  ==========================
target     int8 (W8A8) layers become                              runs on
=========  =====================================================  ==========================
generic    MatMulInteger int8 x int8 + fp outlier MatMul          any ONNX runtime
ort-cpu    MatMulInteger on uint8 X+128 and W+128, zero points    ONNX Runtime, CPU EP
           128 (exact; MLAS's fast u8 x u8 path) + fp outliers
ort-cuda   MatMulNBits 8-bit weight-only on the same int8         ONNX Runtime, CUDA EP
           weights (X stays fp16) + fp outlier MatMul             (CPU EP runs it too)
=========  =====================================================  ==========================

Weight-only layers (``w8-weight-only``, ``w4-weight-only``) become MatMulNBits on ``ort-cuda``
and dequantize + MatMul elsewhere (ONNX Runtime folds that into an fp32 MatMul at load: faster
on its CPU EP than MatMulNBits, whose 8-bit CPU kernel dequantizes on every call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from qcompiler.backends.onnxruntime.translations import ort_cpu_table, ort_table, standard_table
from qcompiler.registry import Registry

__all__ = ["ExportTarget", "TARGETS", "register_target", "get_target", "list_targets"]


@dataclass(frozen=True)
class ExportTarget:
    name: str
    lowering: str                          # pipeline text run on a copy of the program
    translations: Callable[[], dict]       # op overload -> onnxscript function
    providers: tuple[str, ...]             # ORT execution providers, most preferred first
    description: str = ""


TARGETS: Registry[ExportTarget] = Registry("ONNX export target")


def register_target(target: ExportTarget) -> ExportTarget:
    return TARGETS.register(target.name, target)


def get_target(name: str) -> ExportTarget:
    return TARGETS.get(name)


def list_targets() -> list[str]:
    return TARGETS.names()


register_target(ExportTarget(
    "generic", "label-onnx-lowering{matmul_nbits=false}", standard_table, ("CPUExecutionProvider",),
    "standard ONNX operators only: the scheme exactly (int8 X and W, fp outliers)"))
register_target(ExportTarget(
    "ort-cpu", "label-onnx-lowering{matmul_nbits=false,u8_activations=true}", ort_cpu_table,
    ("CPUExecutionProvider",),
    "ONNX Runtime CPU: int8 layers as MatMulInteger uint8 x uint8 (MLAS, exact)"))
register_target(ExportTarget(
    "ort-cuda", "lower-ort-matmul-nbits,dce,label-onnx-lowering{matmul_nbits=true}", ort_table,
    ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ONNX Runtime CUDA: int8 layers as MatMulNBits 8-bit weight-only (MatMulInteger is 5x slower there)"))
