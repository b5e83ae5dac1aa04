"""The quantized operators qcompiler rewrites graphs into: the IR every backend lowers.

All live in the ``qcompiler`` torch.library namespace (``torch.ops.qcompiler.*``), each with a
reference implementation in plain torch (CPU and CUDA) and a fake implementation, so rewritten
graphs print, re-trace and export. Conventions shared by every op:

* scales are absmax values (``C_X``, ``C_W`` in the LLM.int8() paper), float32;
  ``q = round(x * 127 / C)``, so dequantization multiplies by ``C / 127``;
* ``x`` may have any number of leading dims; the last one is the reduction dim K;
* int8 x int8 products accumulate in int32 exactly.

The weight-only ops (``weight_only_linear``, ``nf4_linear``; ``ops/weight_only.py``) keep x in
float and store W as unsigned codes with per-group *steps* (``W = (q - z) * s``) or NF4 levels
times a block absmax; their layout is documented there.
"""

from qcompiler.ops.int8_linear import int8_linear, int8_linear_dynamic_outlier, int8_matmul
from qcompiler.ops.weight_only import dequantize_blockwise_int8, nf4_linear, weight_only_linear
from qcompiler.ops.quantize import (
    quantize_rowwise,
    quantize_rowwise_dynamic,
    quantize_tensorwise,
    quantize_weight,
)

__all__ = [
    "quantize_rowwise",
    "quantize_rowwise_dynamic",
    "quantize_tensorwise",
    "quantize_weight",
    "int8_linear",
    "int8_linear_dynamic_outlier",
    "int8_matmul",
    "weight_only_linear",
    "nf4_linear",
    "dequantize_blockwise_int8",
    "QUANTIZE_OPS",
    "MATMUL_OPS",
    "WEIGHT_ONLY_OPS",
]

import torch

QUANTIZE_OPS = (
    torch.ops.qcompiler.quantize_rowwise.default,
    torch.ops.qcompiler.quantize_rowwise_dynamic.default,
    torch.ops.qcompiler.quantize_tensorwise.default,
)
MATMUL_OPS = (
    torch.ops.qcompiler.int8_linear.default,
    torch.ops.qcompiler.int8_linear_dynamic_outlier.default,
)
WEIGHT_ONLY_OPS = (
    torch.ops.qcompiler.weight_only_linear.default,
    torch.ops.qcompiler.nf4_linear.default,
)
