"""The split-K GEMVs' tile counters (``_split_k_counters``): one persistent buffer per device,
zero before and after every launch (no zero-fill per call), a ring of slices; on a GPU also under
CUDA-graph capture and replay, and a capture that comes before any eager call."""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE
from weight_only_problems import FORMATS, dequant_ref, make_problem, make_x16, rounding_tol, within

from qcompiler.backends.triton import _split_k_counters as C
from qcompiler.backends.triton.weight_only_gemv import weight_only_gemv
from qcompiler.backends.triton.weight_only_gemv_row import weight_only_gemv_row

K, N = 301, 40
ROW_SPLIT = dict(BLOCK_N=16, BLOCK_KB=64, SPLIT_K=3)
DOT_SPLIT = dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=3)


def _ring() -> torch.Tensor:
    dev = torch.device(DEVICE)
    if dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    return C._BUFFERS[dev]


def test_counters_are_a_ring_of_zeroed_slices():
    a = C.split_k_counters(torch.device(DEVICE), 7)
    b = C.split_k_counters(torch.device(DEVICE), 5)
    assert a.dtype == torch.int32 and a.numel() == 7 and b.numel() == 5
    assert (a == 0).all() and (b == 0).all()
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # one buffer
    assert b.data_ptr() != a.data_ptr()  # the next slice, not the same counters
    big = C.split_k_counters(torch.device(DEVICE), C.RING_COUNTERS + 1)  # larger than the ring: its own
    assert big.numel() == C.RING_COUNTERS + 1 and (big == 0).all()
    C._NEXT[a.device if a.device.type != "cuda" else torch.device("cuda", a.device.index)] = C.RING_COUNTERS - 2
    c = C.split_k_counters(torch.device(DEVICE), 5)  # does not fit before the end: wraps to 0
    assert c.data_ptr() == _ring().data_ptr()


@pytest.mark.parametrize("kernel", ["row", "dot"])
@pytest.mark.parametrize("fmt", ["w4-g128", "nf4-b64-dq"], ids=str)
def test_split_k_leaves_counters_zero_and_repeats(fmt, kernel):
    # Many split launches on the same ring: each must find its counters zero (else the last
    # arriver is never found, or found early) and leave them zero; the results repeat bit for bit.
    dtype = torch.float16
    p = make_problem(FORMATS[fmt], N, K, dtype, seed=5)
    m = 1 if kernel == "row" else 3
    x = make_x16(m, K, dtype, seed=6)
    if kernel == "row":
        run = lambda: weight_only_gemv_row(x, p.operand(), p.bias, config=ROW_SPLIT)  # noqa: E731
    else:
        run = lambda: weight_only_gemv(x, p.operand(), p.bias, dot=True, config=DOT_SPLIT)  # noqa: E731
    ys = [run() for _ in range(3)]
    ref = dequant_ref(p, x)
    within(ys[0], ref, rounding_tol(x, p, ref, dtype))
    assert all(torch.equal(ys[0], y) for y in ys[1:])
    if torch.device(DEVICE).type == "cuda":
        torch.cuda.synchronize()
    assert int(_ring().abs().sum()) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("eager_first", [True, False], ids=["warm", "capture-first"])
def test_split_k_under_cuda_graph(eager_first):
    # The captured launches keep their counter slices; replays give the eager result and leave the
    # counters zero. Captured before any eager call (no buffer yet), the op zeroes per call instead.
    dtype = torch.float16
    p = make_problem(FORMATS["w4-g128"], N, K, dtype, seed=7)
    op = p.operand()
    x = make_x16(1, K, dtype, seed=8)
    x3 = make_x16(3, K, dtype, seed=9)
    if not eager_first:
        C._BUFFERS.clear()
        C._NEXT.clear()
    else:
        weight_only_gemv_row(x, op, p.bias, config=ROW_SPLIT)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        with torch.cuda.graph(g, stream=s):
            y1 = weight_only_gemv_row(x, op, p.bias, config=ROW_SPLIT)
            y3 = weight_only_gemv(x3, op, p.bias, dot=True, config=DOT_SPLIT)
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y1, weight_only_gemv_row(x, op, p.bias, config=ROW_SPLIT))
    assert torch.equal(y3, weight_only_gemv(x3, op, p.bias, dot=True, config=DOT_SPLIT))
    torch.cuda.synchronize()
    assert int(_ring().abs().sum()) == 0
