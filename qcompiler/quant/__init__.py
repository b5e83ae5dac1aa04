"""Weight formats as plain tensor functions: packing, round-to-nearest quantizers, codebooks.

Used at compile time by ``quantize-weights`` (and by smarter algorithms such as GPTQ/AWQ, which
compute their own codes and hand them to :func:`qcompiler.passes.quantize_weights.materialize_uint`),
and by the reference implementations of the weight-only ops. No graph code lives here.

Layout shared by every format (the same as ONNX Runtime's ``MatMulNBits`` when K is a multiple of
the group size): a ``[N, K]`` weight is quantized in groups of ``g`` consecutive input dims of one
output row; scales (and zero points) are ``[N, ceil(K / g)]``; 4-bit codes are packed two per byte,
row-major ``[N, ceil(K / 2)]`` uint8, the even k in the low nibble.
"""

from qcompiler.quant.nf4 import (DOUBLE_QUANT_BLOCK, NF4_CODEBOOK, dequantize_blockwise_int8, dequantize_nf4, double_quantize,
                                 quantize_nf4)
from qcompiler.quant.packing import pack_int4, unpack_int4
from qcompiler.quant.uniform import UIntWeight, dequantize_uint, effective_group_size, quantize_uint

__all__ = [
    "pack_int4", "unpack_int4",
    "UIntWeight", "quantize_uint", "dequantize_uint", "effective_group_size",
    "NF4_CODEBOOK", "DOUBLE_QUANT_BLOCK", "quantize_nf4", "dequantize_nf4", "double_quantize", "dequantize_blockwise_int8",
]
