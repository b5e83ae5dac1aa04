"""NF4 (``qcompiler::nf4_linear``, ``qcompiler::dequantize_blockwise_int8``) as ONNX.

Two forms, chosen per target (``translations.py``):

``nf4_linear_standard``   standard operators: Gather(the 16 NF4 levels, codes) * absmax per block,
                          then MatMul (ONNX Runtime folds the weight at load, as for int4).
``nf4_linear_msft``       ONNX Runtime's ``com.microsoft.MatMulBnb4`` (``quant_type=1``: NF4), whose
                          CPU and CUDA kernels read the weight in 4 bits.

MatMulBnb4's layout (ORT ``contrib_ops/cpu/quantization/dequantize_blockwise_bnb4.h``): ``B``
is the ``[N, K]`` weight (``transB``, the default), flattened row-major, two codes per byte with
the *first* element in the high nibble (bitsandbytes' order), ``absmax`` one per run of
``block_size`` consecutive elements of the flattened weight (16 .. 256), in A's type; its NF4
table is the same 16 levels, indexed the same way, as ``qcompiler.quant.nf4.NF4_CODEBOOK``. So
when ``block_size`` divides K, its blocks are qcompiler's per-row blocks, ``absmax`` is ours
flattened, and ``B`` is our ``qweight`` flattened with its two nibbles swapped. Other block sizes
fall back to the standard form. Its CPU kernel takes float32 only (it dequantizes the whole
weight on every call, then runs an fp32 GEMM); its CUDA kernel takes float32 and float16.
Double quantization stays a few standard operators on the small absmax tensor.
"""

from __future__ import annotations

import onnx
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.values import Op

from qcompiler.quant.nf4 import NF4_CODEBOOK

__all__ = ["nf4_linear_standard", "nf4_linear_msft", "dequantize_blockwise_int8", "MATMUL_BNB4_BLOCKS"]

MATMUL_BNB4_BLOCKS = (16, 32, 64, 128, 256)
_F32 = ir.DataType.FLOAT
_NF4 = 1  # MatMulBnb4's quant_type for NF4 (0 is FP4)


def _ints(*v: int):
    return op.Constant(value_ints=list(v))


def _cast_like(v, ref):
    dtype = getattr(ref, "dtype", None)
    return op.Cast(v, to=int(dtype)) if dtype is not None else op.CastLike(v, ref)


def _nf4_weight(qweight, absmax, block: int, k: int):
    """``[N, ceil(K/2)]`` packed codes -> ``[N, K]`` float32 ``NF4_CODEBOOK[q] * absmax``, the
    absmax broadcast per block in the graph (stored ``[N, G]``, never per weight)."""
    from qcompiler.backends.onnxruntime.translations import _unpack4
    n, groups = absmax.shape[0], absmax.shape[1]
    codes = op.Cast(_unpack4(qweight, k), to=ir.DataType.INT64)
    if groups * block != k:
        codes = op.Pad(codes, _ints(0, 0, 0, groups * block - k))  # code 0 in the padding, sliced off
    table = op.Constant(value=ir.tensor(NF4_CODEBOOK.numpy()))
    levels = op.Gather(table, op.Reshape(codes, _ints(n, groups, block)), axis=0)
    w = op.Reshape(op.Mul(levels, op.Unsqueeze(op.Cast(absmax, to=_F32), _ints(2))), _ints(n, groups * block))
    if groups * block == k:
        return w
    return op.Slice(w, _ints(0), _ints(k), _ints(1))


def nf4_linear_standard(x, qweight, absmax, bias=None, block_size: int = 64):
    """``qcompiler::nf4_linear`` in standard operators: the NF4 weight, then MatMul in float32."""
    k = x.shape[-1]
    w = _nf4_weight(qweight, absmax, block_size, k)
    y = op.MatMul(op.Cast(x, to=_F32), op.Transpose(w, perm=[1, 0]))
    if bias is not None:
        y = op.Add(y, op.Cast(bias, to=_F32))
    return _cast_like(y, x)


def _swap_nibbles(q):
    four = op.Constant(value=ir.tensor(4, dtype=ir.DataType.UINT8))
    return op.BitwiseOr(op.BitShift(q, four, direction="LEFT"), op.BitShift(q, four, direction="RIGHT"))


def nf4_linear_msft(x, qweight, absmax, bias=None, block_size: int = 64):
    """``qcompiler::nf4_linear`` as ``com.microsoft.MatMulBnb4`` (see the module docstring)."""
    n, k = qweight.shape[0], x.shape[-1]
    if block_size not in MATMUL_BNB4_BLOCKS or not isinstance(k, int) or k % block_size:
        return nf4_linear_standard(x, qweight, absmax, bias, block_size)
    b = op.Reshape(_swap_nibbles(qweight), _ints(-1))
    a = op.Reshape(_cast_like(absmax, x), _ints(-1))
    y = _MATMUL_BNB4(x, b, a, K=k, N=n, block_size=block_size, quant_type=_NF4)
    if bias is not None:
        y = op.Add(y, _cast_like(bias, x))
    return y


def dequantize_blockwise_int8(q, absmax, offset, block_size: int = 256):
    """``qcompiler::dequantize_blockwise_int8``: ``q * absmax[i // block] / 127 + offset`` over the
    flattened ``q``, float32, shape of ``q`` (static: it is a stored tensor)."""
    shape = list(q.shape)
    numel = 1
    for d in shape:
        numel *= d
    blocks = -(-numel // block_size)
    flat = op.Reshape(op.Cast(q, to=_F32), _ints(-1))
    if blocks * block_size != numel:
        flat = op.Pad(flat, _ints(0, blocks * block_size - numel))
    per = op.Div(op.Unsqueeze(op.Cast(absmax, to=_F32), _ints(1)), op.Constant(value_float=127.0))
    deq = op.Add(op.Mul(op.Reshape(flat, _ints(blocks, block_size)), per), op.Cast(offset, to=_F32))
    deq = op.Reshape(deq, _ints(-1))
    if blocks * block_size != numel:
        deq = op.Slice(deq, _ints(0), _ints(numel), _ints(0))
    return op.Reshape(deq, _ints(*shape))


def _matmul_bnb4_schema() -> onnx.defs.OpSchema:
    """MatMulBnb4 as ORT's contrib_defs declare it (ONNX has no schema for contrib ops)."""
    S = onnx.defs.OpSchema
    opt = False
    return S("MatMulBnb4", "com.microsoft", 1, inputs=[
        S.FormalParameter("A", "T1"), S.FormalParameter("B", "T2"), S.FormalParameter("absmax", "T1")],
        outputs=[S.FormalParameter("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                          ("T2", ["tensor(uint8)"], "")],
        attributes=[S.Attribute("K", S.AttrType.INT), S.Attribute("N", S.AttrType.INT),
                    S.Attribute("block_size", S.AttrType.INT), S.Attribute("quant_type", S.AttrType.INT),
                    S.Attribute("transB", S.AttrType.INT, required=opt),
                    S.Attribute("training_mode", S.AttrType.INT, required=opt)])


def _msft():
    from qcompiler.backends.onnxruntime.translations import msft
    return msft


_MATMUL_BNB4 = Op(_msft(), "MatMulBnb4", _matmul_bnb4_schema())
