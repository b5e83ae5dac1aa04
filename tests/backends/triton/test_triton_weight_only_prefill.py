"""The prefill-size weight-only engines (whole dequantize + cuBLAS, L2-sized chunks, the mixed-input
GEMM with its large-tile config) against a float64 reference on the same codes, plus the row
slicing of an operand (NF4's double-quantization blocks kept whole)."""

from __future__ import annotations

import pytest
import torch
from triton_problems import replay_in_cuda_graph
from weight_only_problems import FORMATS, dequant_ref, make_problem, make_x16, rounding_tol, within

from qcompiler.backends.triton import weight_only_prefill as wp
from qcompiler.backends.triton.dequantize_weight import dequantize_weight

K, N, M = 192, 520, 40  # N: two NF4 double-quant chunks of 256 rows + a short one
# A few rows per chunk: several chunks and a short last one (chunk_rows aligns to 8 rows / dq blocks).
SMALL_CHUNK = 24 * K * 2
SMALL_CONFIG = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64, SPLIT_K=1, num_warps=4, num_stages=2)


@pytest.mark.parametrize("engine", [wp.ENGINE_DEQUANT, wp.ENGINE_CHUNKED, wp.ENGINE_MIXED])
@pytest.mark.parametrize("fmt", ["w8-channel", "w4-g48-asym", "nf4-b64-dq"], ids=str)
def test_engine_matches_float64_reference(fmt, engine):
    dtype = torch.float16
    p = make_problem(FORMATS[fmt], N, K, dtype, seed=7)
    x = make_x16(M, K, dtype, seed=8)
    y = wp.prefill_linear(x, p.operand(), p.bias, engine=engine, chunk_bytes=SMALL_CHUNK, config=SMALL_CONFIG)
    assert y.shape == (M, N) and y.dtype == dtype and y.is_contiguous()
    ref = dequant_ref(p, x)
    within(y, ref, rounding_tol(x, p, ref, dtype))


def test_chunked_without_bias_and_with_leading_dims():
    # Several chunks (and a short last one) written into column slices of a 3-D output.
    dtype = torch.bfloat16
    p = make_problem(FORMATS["w4-g48-asym"], N, K, dtype, seed=9, bias=False)
    w = p.operand()
    x = make_x16(M, K, dtype, seed=10, lead=(2,))
    y = wp.prefill_linear(x, w, None, engine=wp.ENGINE_CHUNKED, chunk_bytes=SMALL_CHUNK)
    assert y.shape == (2, M, N)
    ref = dequant_ref(p, x)
    within(y, ref, rounding_tol(x, p, ref, dtype))


def test_operand_rows_dequantize_like_the_whole():
    p = make_problem(FORMATS["nf4-b64-dq"], N, K, torch.float16, seed=11)
    w = p.operand()
    rows = wp.chunk_rows(w, 2, SMALL_CHUNK)
    assert rows < N and (rows * w.groups) % w.dq_block == 0
    whole = dequantize_weight(w, torch.float16)
    for n0 in range(0, N, rows):
        n1 = min(n0 + rows, N)
        assert torch.equal(dequantize_weight(wp.operand_rows(w, n0, n1), torch.float16), whole[n0:n1])
    with pytest.raises(ValueError, match="double-quantization block"):
        wp.operand_rows(w, 1, 2)


def test_auto_engine_follows_thresholds(monkeypatch):
    monkeypatch.setattr(wp, "MIXED_MIN_M", None)
    monkeypatch.setattr(wp, "CHUNKED_MIN_M", 512)
    assert wp.prefill_engine(wp.ENGINE_AUTO, 300) == wp.ENGINE_DEQUANT
    assert wp.prefill_engine(wp.ENGINE_AUTO, 512) == wp.ENGINE_CHUNKED
    monkeypatch.setattr(wp, "MIXED_MIN_M", 1024)
    assert wp.prefill_engine(wp.ENGINE_AUTO, 4096) == wp.ENGINE_MIXED
    assert wp.prefill_engine(wp.ENGINE_DEQUANT, 4096) == wp.ENGINE_DEQUANT


def test_dequantize_weight_out_checks():
    p = make_problem(FORMATS["w8-channel"], N, K, torch.float16, seed=12)
    with pytest.raises(ValueError, match="unit column stride"):
        dequantize_weight(p.operand(), torch.float16, out=torch.empty(N, K + 1, dtype=torch.float16,
                                                                       device=p.w.device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
def test_chunked_is_cuda_graph_safe():
    dtype = torch.float16
    p = make_problem(FORMATS["w4-g128"], 256, 512, dtype, seed=13)
    w = p.operand()
    x = make_x16(300, 512, dtype, seed=14)
    run = lambda: wp.prefill_linear(x, w, p.bias, engine=wp.ENGINE_CHUNKED, chunk_bytes=64 * 512 * 2)  # noqa: E731
    eager = run()
    assert torch.equal(replay_in_cuda_graph(run), eager)
