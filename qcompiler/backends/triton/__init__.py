"""Triton GPU kernels for qcompiler's int8 ops (LLM.int8() with fp16/bf16 outliers) and its
weight-only ops (8/4-bit UINT, NF4).

Each reference op of :mod:`qcompiler.ops` has a kernel here with the same semantics, registered
as a torch custom op in the ``qcompiler_triton`` namespace (:mod:`.ops`), plus two whole-linear
ops that dispatch on the number of rows (weight-only int8 for M <= 16, int8 x int8 above):

=====================================  ==============================================
``torch.ops.qcompiler.*``              ``torch.ops.qcompiler_triton.*``
=====================================  ==============================================
quantize_rowwise                       quantize_rowwise
quantize_rowwise_dynamic               quantize_rowwise_dynamic
int8_linear                            int8_linear
int8_linear_dynamic_outlier            int8_linear_dynamic_outlier
quantize_rowwise + int8_linear         int8_outlier_linear (M-dispatched)
quantize_rowwise_dynamic + ..._outlier int8_dynamic_outlier_linear (M-dispatched)
(none)                                 weight_only_int8_linear
weight_only_linear (8/4-bit)           weight_only_uint_linear (M-dispatched)
nf4_linear (+ double-quant absmax)     weight_only_nf4_linear (M-dispatched)
=====================================  ==============================================

Above M = 16 the int8 linears quantize X with a separate one-pass kernel, or, with
``lower-triton{act_quant=fused}``, inside the GEMM (a row-absmax prologue, then X tiles quantized
in registers: :mod:`.act_quant`, :mod:`.int8_linear_fused_quant`); same outputs bit for bit. The
int8 GEMM itself runs on the pointer-load kernel, or from M = 2048 (N >= 4096) on the TMA +
persistent kernel (:mod:`.int8_gemm_engine`).

The weight-only ops run a split-K GEMV that unpacks W in registers for M <= 16
(:mod:`.weight_only_gemv`), the same kernel tiled over M (a mixed-input GEMM) up to M = 256, and
dequantize-to-16-bit + cuBLAS above (:mod:`.dequantize_weight`).

Kernels run on CUDA GPUs of compute capability >= 7.5 (int8 tensor cores), or on the CPU under
``TRITON_INTERPRET=1`` (set before this package is imported); :func:`is_available` says which.
"""

from __future__ import annotations

import os

import torch

__all__ = [
    "is_available",
    "MIN_CAPABILITY",
    "SUPPORTED_DTYPES",
    "quantize_rowwise",
    "quantize_rowwise_dynamic",
    "int8_linear",
    "int8_linear_dynamic_outlier",
    "weight_only_linear",
    "int8_outlier_linear",
    "int8_dynamic_outlier_linear",
    "outlier_mask_from_idx",
    "SMALL_M",
    "weight_only_uint_linear",
    "weight_only_nf4_linear",
    "weight_only_gemv",
    "weight_only_matmul",
    "dequantize_weight",
    "WEIGHT_ONLY_SMALL_M",
    "WEIGHT_ONLY_GEMM_MAX_M",
]

# int8 mma (and so int8 tl.dot) needs Turing or newer.
MIN_CAPABILITY = (7, 5)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)

try:
    import triton  # noqa: F401

    _TRITON_ERROR = None
except ImportError as e:  # pragma: no cover - triton ships with CUDA torch
    _TRITON_ERROR = f"triton is not importable ({e})"

if _TRITON_ERROR is None:
    from qcompiler.backends.triton import ops  # noqa: F401  (registers torch.ops.qcompiler_triton)
    from qcompiler.backends.triton.int8_linear import int8_linear
    from qcompiler.backends.triton.int8_linear_dynamic_outlier import int8_linear_dynamic_outlier
    from qcompiler.backends.triton.outlier_linear import (int8_dynamic_outlier_linear,
                                                          int8_outlier_linear)
    from qcompiler.backends.triton.quantize_rowwise import outlier_mask_from_idx, quantize_rowwise
    from qcompiler.backends.triton.quantize_rowwise_dynamic import quantize_rowwise_dynamic
    from qcompiler.backends.triton.weight_only_linear import SMALL_M, weight_only_linear
    from qcompiler.backends.triton.dequantize_weight import dequantize_weight
    from qcompiler.backends.triton.weight_only_gemv import weight_only_gemv, weight_only_matmul
    from qcompiler.backends.triton.weight_only_linear_ops import (WEIGHT_ONLY_GEMM_MAX_M,
                                                                  WEIGHT_ONLY_SMALL_M,
                                                                  weight_only_nf4_linear,
                                                                  weight_only_uint_linear)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def is_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether the kernels can run on ``device`` (default: the current CUDA device).

    Returns ``(ok, reason)``; ``reason`` says what is missing, or what will run them.

    >>> ok, why = is_available("cuda")   # (False, 'CUDA is not available') on a CPU machine
    """
    if _TRITON_ERROR is not None:
        return False, _TRITON_ERROR
    if _interpreting():
        return True, "TRITON_INTERPRET=1: kernels run in Triton's CPU interpreter"
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type != "cuda":
        return False, (f"device '{dev}' is not a CUDA device (set TRITON_INTERPRET=1 before "
                       "importing qcompiler to run the kernels in the CPU interpreter)")
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    cc = torch.cuda.get_device_capability(dev)
    name = torch.cuda.get_device_name(dev)
    if cc < MIN_CAPABILITY:
        return False, (f"{name} has compute capability {cc[0]}.{cc[1]}; int8 tensor-core "
                       f"kernels need >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}")
    return True, f"{name} (compute capability {cc[0]}.{cc[1]})"
