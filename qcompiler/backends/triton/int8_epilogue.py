"""The epilogue every int8 GEMM of this backend shares: dequantize the int32 accumulator with the
row ⊗ column scales, add the 16-bit outlier product and the bias, all in registers.

One ``@triton.jit`` function, called by :mod:`.int8_linear` (int8 X from a quantize kernel) and
:mod:`.int8_linear_fused_quant` (16-bit X quantized inside the GEMM), so both produce the same
float32 values from the same int32 accumulator: the fused and the unfused paths agree bit for bit.

Outlier modes (``OUTLIERS``):

* ``OUTLIERS_NONE``: no 16-bit part (SmoothQuant, int8 without decomposition);
* ``OUTLIERS_DENSE``: ``xo [M, n]`` (gathered by a quantize kernel) times ``wo [N, n]``;
* ``OUTLIERS_GATHER``: columns ``idx[:cnt]`` (``cnt`` read on the device) of the 16-bit X and of
  the int8 W, dequantized in registers (dynamic LLM.int8());
* ``OUTLIERS_GATHER_X``: columns ``idx[:n_out]`` of the 16-bit X times the dense ``wo [N, n]``
  (static LLM.int8() with the quantization fused: X's outlier columns are read straight from X).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["int8_epilogue", "outlier_dot", "OUTLIERS_NONE", "OUTLIERS_DENSE", "OUTLIERS_GATHER",
           "OUTLIERS_GATHER_X"]

OUTLIERS_NONE, OUTLIERS_DENSE, OUTLIERS_GATHER, OUTLIERS_GATHER_X = 0, 1, 2, 3


@triton.jit
def outlier_dot(xo, wo, acc, DOT_F32: tl.constexpr):
    """16-bit ``xo @ wo`` into the float32 ``acc``. The CPU interpreter's ``tl.dot`` multiplies
    bf16 bit patterns as integers, so there both sides go up to float32 first (exact for 16-bit
    values; the same products and float32 sums as the tensor cores)."""
    if DOT_F32:
        return tl.dot(xo.to(tl.float32), wo.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(xo, wo, acc)


@triton.jit
def int8_epilogue(acc, rm, rn, xs, ws_ptr, xo_ptr, wo_ptr, idx_ptr, cnt_ptr, b_ptr, wq_ptr, n_out,
                  stride_xom, stride_xok, stride_won, stride_wok, stride_wqn, stride_wqk, stride_wsn,
                  OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_O: tl.constexpr,
                  DOT_F32: tl.constexpr):
    """float32 ``acc * (xs ⊗ ws) / 127² + outliers + bias`` for rows ``rm`` and columns ``rn``
    (int64, already wrapped into range); ``xs``: the rows' scales, loaded by the caller."""
    ws = tl.load(ws_ptr + rn * stride_wsn)
    # Same multiplication order as the reference: acc * (xs ⊗ ws) * (1/127²).
    out = acc.to(tl.float32) * (xs[:, None] * ws[None, :]) * (1.0 / (127.0 * 127.0))
    if OUTLIERS == 1:
        for o0 in range(0, n_out, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            o_ok = offs_o < n_out
            xo = tl.load(xo_ptr + rm[:, None] * stride_xom + offs_o[None, :] * stride_xok,
                         mask=o_ok[None, :], other=0.0)
            wo = tl.load(wo_ptr + rn[None, :] * stride_won + offs_o[:, None] * stride_wok,
                         mask=o_ok[:, None], other=0.0)
            out = outlier_dot(xo, wo.to(xo.dtype), out, DOT_F32)
    if OUTLIERS == 2:
        cnt = tl.load(cnt_ptr)
        w_deq = ws / 127.0
        for o0 in range(0, cnt, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            o_ok = offs_o < cnt
            col = tl.load(idx_ptr + offs_o, mask=o_ok, other=0).to(tl.int64)
            xo = tl.load(xo_ptr + rm[:, None] * stride_xom + col[None, :] * stride_xok,
                         mask=o_ok[None, :], other=0.0)
            wc = tl.load(wq_ptr + rn[None, :] * stride_wqn + col[:, None] * stride_wqk,
                         mask=o_ok[:, None], other=0)
            wo = (wc.to(tl.float32) * w_deq[None, :]).to(xo.dtype)
            out = outlier_dot(xo, wo, out, DOT_F32)
    if OUTLIERS == 3:
        for o0 in range(0, n_out, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            o_ok = offs_o < n_out
            col = tl.load(idx_ptr + offs_o, mask=o_ok, other=0).to(tl.int64)
            xo = tl.load(xo_ptr + rm[:, None] * stride_xom + col[None, :] * stride_xok,
                         mask=o_ok[None, :], other=0.0)
            wo = tl.load(wo_ptr + rn[None, :] * stride_won + offs_o[:, None] * stride_wok,
                         mask=o_ok[:, None], other=0.0)
            out = outlier_dot(xo, wo.to(xo.dtype), out, DOT_F32)
    if HAS_BIAS:
        out += tl.load(b_ptr + rn).to(tl.float32)[None, :]
    return out
