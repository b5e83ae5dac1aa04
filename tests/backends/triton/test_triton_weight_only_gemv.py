"""The weight-only kernel: the small-M GEMV (``weight_only_gemv``) and the same kernel tiled over M
(``weight_only_matmul``, the mixed-input GEMM): int8 / int4 (packed, with and without zero points)
and NF4 (with and without double-quantized absmax) against float64 on the same decoded weights,
and against the float model in units of the format's quantization step.

Shapes are awkward on purpose: K = 301 (odd: the last byte of a packed row holds one code; not a
multiple of the groups 128 / 64 / 48 / 50, so the last group is short), N = 40 (not a multiple of
BLOCK_N), M in {1, 3, 16}. Under the interpreter, tiles are BLOCK_K = 64: groups 128 / 64 / K keep
one scale per tile, groups 48 / 50 take the per-element path.
"""

from __future__ import annotations

import pytest
import torch
from weight_only_problems import FORMATS, dequant_ref, make_problem, make_x16, rounding_tol, within

import sys

from qcompiler.backends.triton.weight_only_gemv import GEMV_MAX_M, weight_only_gemv, weight_only_matmul

# The module (the package re-exports a function of the same name).
gemv_mod = sys.modules["qcompiler.backends.triton.weight_only_gemv"]


@pytest.fixture
def workspaces(monkeypatch):
    """The split-K workspaces the launches allocate (per call, never cached)."""
    made = []

    def record(*args):
        made.append(real(*args))
        return made[-1]

    real = gemv_mod._split_k_workspace
    monkeypatch.setattr(gemv_mod, "_split_k_workspace", record)
    return made

DTYPES = [torch.float16, torch.bfloat16]
K, N = 301, 40


def _check(y, x, p, dtype):
    ref = dequant_ref(p, x)
    tol = rounding_tol(x, p, ref, dtype)
    within(y, ref, tol)
    # Against the float model: each weight is off by at most its step bound (half a UINT step,
    # half the widest NF4 gap times the absmax), so |dy| <= |x| @ step.T, plus the rounding above.
    true = x.double().reshape(-1, x.shape[-1]) @ p.w.double().t()
    if p.bias is not None:
        true = true + p.bias.double()
    within(y, true, tol + x.double().abs().reshape(-1, x.shape[-1]) @ p.step.t())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 3, GEMV_MAX_M])
@pytest.mark.parametrize("fmt", list(FORMATS), ids=str)
def test_gemv_matches_reference(fmt, m, dtype):
    p = make_problem(FORMATS[fmt], N, K, dtype, seed=m)
    x = make_x16(m, K, dtype, seed=m + 7)
    y = weight_only_gemv(x, p.operand(), p.bias)
    assert y.shape == (m, N) and y.dtype == dtype
    _check(y, x, p, dtype)


_CONFIGS = [
    dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=1),     # no split: direct store
    dict(BLOCK_N=32, BLOCK_K=128, SPLIT_K=3),    # 3 splits over 3 K tiles, one group per tile
    dict(BLOCK_N=64, BLOCK_K=64, SPLIT_K=8),     # more splits than K tiles: empty splits add 0
    dict(BLOCK_N=16, BLOCK_K=256, SPLIT_K=2),    # tiles wider than the group: per-element scales
]


@pytest.mark.parametrize("config,dot", [(c, d) for c in _CONFIGS for d in (False, True)]
                         + [(dict(BLOCK_N=8, BLOCK_K=128, SPLIT_K=2), False)],  # tl.dot needs N >= 16
                         ids=lambda v: "n{BLOCK_N}k{BLOCK_K}s{SPLIT_K}".format(**v) if isinstance(v, dict)
                         else ("dot" if v else "fma"))
def test_gemv_configs(config, dot, workspaces):
    # Every tile/split shape computes the same layer; the split-K counters are left at 0.
    dtype = torch.float16
    p = make_problem(FORMATS["w4-g128"], N, K, dtype, seed=1)
    x = make_x16(1, K, dtype, seed=2)
    y = weight_only_gemv(x, p.operand(), p.bias, dot=dot, config=config)
    _check(y, x, p, dtype)
    # Every program that arrives last resets its tile counter: the kernel leaves them as it found them.
    assert all(int(lock.count_nonzero()) == 0 for _, lock in workspaces)


def test_gemv_deterministic_and_leading_dims():
    # The last-arriving program sums the partials in split order: bit-identical runs; x [2, 3, K].
    dtype = torch.bfloat16
    p = make_problem(FORMATS["nf4-b64-dq"], N, K, dtype, seed=3)
    x = make_x16(3, K, dtype, seed=4, lead=(2,))
    op = p.operand()
    y = weight_only_gemv(x, op, p.bias, config=dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=4))
    assert y.shape == (2, 3, N)
    assert torch.equal(y, weight_only_gemv(x, op, p.bias, config=dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=4)))
    _check(y, x, p, dtype)


def test_gemv_larger_single_row():
    # One larger decode-like case: K = 2048 (16 groups of 128), N = 200.
    dtype = torch.float16
    p = make_problem(FORMATS["w4-g128"], 200, 2048, dtype, seed=5, bias=False)
    x = make_x16(1, 2048, dtype, seed=6)
    _check(weight_only_gemv(x, p.operand(), None), x, p, dtype)


@pytest.mark.parametrize("fmt,m,config", [
    ("w4-g128", 17, None),                                                   # interpreter config
    ("w4-g48-asym", 40, dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=128, SPLIT_K=1)),  # per-element scales
    ("nf4-b64-dq", 70, dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3)),    # 2 M tiles x 3 splits
    ("w8-g64-asym", 33, dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, SPLIT_K=2)),
], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matmul_tiled_over_m(fmt, m, config, dtype, workspaces):
    # M not a multiple of BLOCK_M; the split-K counters are per (M tile, N tile) and end at 0.
    p = make_problem(FORMATS[fmt], N, K, dtype, seed=m)
    x = make_x16(m, K, dtype, seed=m + 3)
    y = weight_only_matmul(x, p.operand(), p.bias, config=config)
    assert y.shape == (m, N) and y.dtype == dtype
    _check(y, x, p, dtype)
    # Every program that arrives last resets its tile counter: the kernel leaves them as it found them.
    assert all(int(lock.count_nonzero()) == 0 for _, lock in workspaces)


def test_gemv_rejects_bad_inputs():
    p = make_problem(FORMATS["w8-channel"], N, K, torch.float16, seed=0)
    op = p.operand()
    with pytest.raises(ValueError, match="at most 16 rows"):
        weight_only_gemv(make_x16(GEMV_MAX_M + 1, K, torch.float16, seed=0), op, None)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        weight_only_gemv(make_x16(1, K, torch.float32, seed=0), op, None)
    with pytest.raises(ValueError, match="K=300"):
        weight_only_gemv(make_x16(1, 300, torch.float16, seed=0), op, None)
    with pytest.raises(ValueError, match="one row"):
        weight_only_gemv(make_x16(2, K, torch.float16, seed=0), op, None, dot=False)
