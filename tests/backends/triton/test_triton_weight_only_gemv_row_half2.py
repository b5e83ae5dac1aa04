"""The one-row GEMV's paired-float16 form for 4-bit codes (``half2_tiles``: HFMA2 on two codes at
once, inline PTX, CUDA only) against float64 on the decoded weights, within its stated tolerance
(2 eps(fp16) of ``sum |x w|`` more than the float32 form); its overflow check (x in the thousands:
the float32 form answers, never inf); and when the launcher chooses it (CPU-checkable).

K = 1024 (whole tiles of 64-512 bytes), N = 72 (not a multiple of BLOCK_N).
"""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE
from weight_only_problems import FORMATS, Format, dequant_ref, make_problem, make_x16, rounding_tol, within

from qcompiler.backends.triton._magic_dequant import asm_available
from qcompiler.backends.triton.weight_only_gemv_row import _half2_ok, weight_only_gemv_row

K, N = 1024, 72
HALF2_FORMATS = {"w4-g128": FORMATS["w4-g128"], "w4-g128-asym": Format("w4-g128-asym", False, 4, 128, symmetric=False),
                 "w4-g64-asym": Format("w4-g64-asym", False, 4, 64, symmetric=False),
                 "w4-channel": Format("w4-channel", False, 4, 0)}
CONFIGS = [dict(BLOCK_N=16, BLOCK_KB=512, SPLIT_K=1, ASM=True, num_warps=4),  # 4 groups a tile, no split
           dict(BLOCK_N=32, BLOCK_KB=128, SPLIT_K=4, ASM=True, num_warps=4),  # split-K, 1-2 groups a tile
           dict(BLOCK_N=2, BLOCK_KB=256, SPLIT_K=1, ASM=True, num_warps=4)]   # narrow: whole K per program
_GPU = pytest.mark.skipif(not asm_available(), reason="the paired-float16 form is inline PTX: needs a CUDA GPU")


def _half2_tol(x, p, ref):
    eps = torch.finfo(torch.float16).eps
    mag = x.double().abs().reshape(-1, K) @ p.w_deq.abs().t()
    return rounding_tol(x, p, ref, torch.float16) + 2 * eps * mag


# (format, config) pairs whose tiles hold whole groups (at most 8 a tile: row_tile_ok).
CASES = [(f, c) for f in ["w4-g128", "w4-g128-asym", "w4-channel"] for c in CONFIGS] + [
    ("w4-g64-asym", CONFIGS[1]), ("w4-g64-asym", CONFIGS[2])]


@_GPU
@pytest.mark.parametrize("fmt,config", CASES,
                         ids=lambda v: v if isinstance(v, str) else "n{BLOCK_N}kb{BLOCK_KB}s{SPLIT_K}".format(**v))
def test_half2_matches_reference(fmt, config):
    p = make_problem(HALF2_FORMATS[fmt], N, K, torch.float16, seed=5)
    x = make_x16(1, K, torch.float16, seed=6)
    op = p.operand()
    assert _half2_ok(x.reshape(K), op)  # with ASM and whole tiles, the kernel takes the paired form
    ref = dequant_ref(p, x)
    within(weight_only_gemv_row(x, op, p.bias, config=config), ref, _half2_tol(x, p, ref))
    # The float32 form of the same config stays within the float32 bound.
    y32 = weight_only_gemv_row(x, op, p.bias, config=dict(config, HALF2=False))
    within(y32, ref, rounding_tol(x, p, ref, torch.float16))


@_GPU
@pytest.mark.parametrize("config", CONFIGS[:2], ids=lambda c: "n{BLOCK_N}kb{BLOCK_KB}s{SPLIT_K}".format(**c))
def test_half2_overflow_falls_back_to_float32(config):
    # x = 6000 everywhere: a float16 lane of four products overflows where |sum (q - z)| >= 11. The
    # program's sums are then not finite and its tiles are re-run in float32: a finite, right answer.
    p = make_problem(HALF2_FORMATS["w4-g128"], N, K, torch.float16, seed=7)
    x = torch.full((1, K), 6000.0, dtype=torch.float16, device=DEVICE)
    op = p.operand()
    lo = (op.qweight & 0xF).to(torch.int32) - 8
    hi = (op.qweight >> 4).to(torch.int32) - 8
    lane_sums = torch.cat([lo.reshape(N, -1, 4).sum(-1), hi.reshape(N, -1, 4).sum(-1)])
    assert (lane_sums.abs() * 6000 > 65504).any()  # the premise: some lane does overflow
    ref = dequant_ref(p, x)
    y = weight_only_gemv_row(x, op, p.bias, config=config)
    within(y, ref, rounding_tol(x, p, ref, torch.float16))


def test_half2_is_chosen_only_where_it_holds():
    # Float16, contiguous, aligned, K % 8 == 0, groups of 8k codes; bf16 / odd K / int8 / views: float32.
    p = make_problem(HALF2_FORMATS["w4-g128"], 8, K, torch.float16, seed=1)
    op = p.operand()
    x = make_x16(1, K + 8, torch.float16, seed=2).reshape(K + 8)
    assert _half2_ok(x[:K], op)
    assert not _half2_ok(x[1:K + 1], op)       # 2 bytes off: not 16-byte aligned
    assert not _half2_ok(x[:K].to(torch.bfloat16), op)
    assert not _half2_ok(make_x16(1, 2 * K, torch.float16, seed=3).reshape(2 * K)[::2], op)  # strided
    p8 = make_problem(FORMATS["w8-channel"], 8, K, torch.float16, seed=1)
    assert not _half2_ok(x[:K], p8.operand())
    p_odd = make_problem(HALF2_FORMATS["w4-g128"], 8, K - 4, torch.float16, seed=1)
    assert not _half2_ok(x[:K - 4], p_odd.operand())
