"""``silu(gate) * up`` folded into the int8 gate/up GEMM (the TMA kernel's gated epilogue), the
elementwise ``silu_mul`` kernel, and ``int8_outlier_linear_silu_mul``'s dispatch by M.

The reference is what the model ran before the fold: the gate/up linear's 16-bit output, then
torch's ``silu`` and ``*``. On CUDA the kernels use the same float32 operations as torch's
kernels, so the results must be equal to the bit. In the CPU interpreter ``exp`` is numpy's, which
can differ from torch's CPU ``exp`` in the last float32 bit: there each value may be one 16-bit
rounding step off (``2 * eps * |ref|``: the silu value's step, then the product's).
"""

from __future__ import annotations

import pytest
import torch
import triton
from triton_problems import DEVICE, eps, make_static_weights, make_x, replay_in_cuda_graph

from qcompiler.backends.triton import int8_gemm_engine as engine_mod
from qcompiler.backends.triton import int8_linear_tma as tma_module
from qcompiler.backends.triton import outlier_linear as outlier_mod
from qcompiler.backends.triton._config import interpreting
from qcompiler.backends.triton.int8_gemm_engine import GEMM_TMA
from qcompiler.backends.triton.int8_linear import int8_linear
from qcompiler.backends.triton.int8_linear_gated_tma import launch_int8_gated_tma
from qcompiler.backends.triton.outlier_linear import int8_outlier_linear, int8_outlier_linear_silu_mul
from qcompiler.backends.triton.silu_mul import launch_silu_mul

REF = torch.ops.qcompiler


def _eager(y: torch.Tensor, h: int) -> torch.Tensor:
    return torch.nn.functional.silu(y[..., :h]) * y[..., h:]


def _check(out: torch.Tensor, ref: torch.Tensor, exact: bool) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    same = (out == ref) | (out.isnan() & ref.isnan())  # inf * 0 is NaN on both sides
    if exact:
        assert same.all(), f"{int((~same).sum())} values differ, e.g. {out[~same][:4]} vs {ref[~same][:4]}"
        return
    tol = 2 * eps(ref.dtype) * ref.float().abs()  # one rounding step of silu, one of the product
    err = (out.float() - ref.float()).abs()
    assert (same | (err <= tol)).all(), f"max err {err[~same].max().item()}"


def _on_gpu() -> bool:
    return DEVICE == "cuda" and not interpreting()


def _requires_tma(xq, wq):
    if tma_module.TensorDescriptor is None:
        pytest.skip(f"triton {triton.__version__} has no triton.tools.tensor_descriptor: no TMA kernel")
    if not interpreting() and torch.cuda.get_device_capability(xq.device) < (9, 0):
        pytest.skip("TMA needs compute capability >= 9.0 (or the CPU interpreter)")
    assert tma_module.tma_supported(xq, wq), f"tma_supported refused {tuple(xq.shape)} x {tuple(wq.shape)}"


def _problem(m, k, h, n_out, dtype, with_bias, seed):
    x, idx = make_x(m, k, n_out, dtype, seed=seed)
    _, wq, ws, wo, bias = make_static_weights(2 * h, k, idx, dtype, seed=seed + 1)
    return x, idx, wq, ws, (wo if n_out else None), (bias if with_bias else None)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n_out,with_bias", [(0, False), (3, True)])
@pytest.mark.parametrize("m,k,h", [(40, 96, 48), (33, 128, 64)])  # M, H not multiples of the tiles; K % 64 != 0
def test_gated_tma_kernel_equals_the_linear_then_silu_mul(m, k, h, n_out, with_bias, dtype):
    x, idx, wq, ws, wo, bias = _problem(m, k, h, n_out, dtype, with_bias, seed=m + h + n_out)
    xq, xs, xo = REF.quantize_rowwise(x, idx)
    _requires_tma(xq, wq)
    y = int8_linear(xq, xs, wq, ws, xo if n_out else None, wo, bias, dtype, gemm=GEMM_TMA)  # [g | u]
    out = torch.empty((m, h), dtype=dtype, device=DEVICE)
    launch_int8_gated_tma(xq, xs.reshape(-1), wq, ws.reshape(-1), xo if n_out else None, wo, bias, out)
    _check(out, _eager(y, h), exact=_on_gpu())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,h", [(1, 700), (3, 64), (37, 300)])
def test_silu_mul_kernel_rounds_as_torch(m, h, dtype):
    g = torch.Generator().manual_seed(m + h)
    y = torch.randn(m, 2 * h, generator=g) * 6
    y[:, :8] = torch.tensor([0.0, -0.0, 30.0, -30.0, 1e4, -1e4, 88.0, -90.0])  # exp under/overflow
    y = y.to(dtype).to(DEVICE)
    _check(launch_silu_mul(y, h), _eager(y, h), exact=_on_gpu())


def _op_args(m, k, h, n_out, dtype, seed=3):
    x, idx, wq, ws, wo, bias = _problem(m, k, h, n_out, dtype, False, seed)
    return (x, wq, ws, idx, None, wo, bias)


@pytest.mark.parametrize("m", [1, 5, 24])  # GEMV row kernel, split-K GEMV, pointer-load GEMM
def test_op_below_the_tma_engine_is_the_linear_then_silu_mul(m):
    args = _op_args(m, 64, 40, 2, torch.float16)
    out = int8_outlier_linear_silu_mul(*args, split=40)
    ref = _eager(int8_outlier_linear(*args), 40)
    assert torch.equal(out, ref), (out.float() - ref.float()).abs().max()  # same ops (CPU) / same rounding (CUDA)


def test_op_on_the_tma_engine_runs_the_gated_kernel(monkeypatch):
    monkeypatch.setattr(engine_mod, "TMA_MIN_M", 17)
    monkeypatch.setattr(engine_mod, "TMA_MIN_N", 1)
    calls = []
    real = outlier_mod.launch_int8_gated_tma
    monkeypatch.setattr(outlier_mod, "launch_int8_gated_tma", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x, wq, ws, idx, mask, wo, bias = _op_args(40, 96, 48, 3, torch.float16)
    _requires_tma(REF.quantize_rowwise(x, idx)[0], wq)
    x3 = x.reshape(2, 20, 96)  # leading dims are kept
    out = int8_outlier_linear_silu_mul(x3, wq, ws, idx, mask, wo, bias, split=48)
    assert calls == [1] and out.shape == (2, 20, 48)
    _check(out, _eager(int8_outlier_linear(x3, wq, ws, idx, mask, wo, bias), 48), exact=_on_gpu())


def test_op_refuses_a_weight_that_is_not_two_halves():
    args = _op_args(4, 64, 40, 0, torch.float16)
    with pytest.raises(ValueError, match="not 2 x 41"):
        int8_outlier_linear_silu_mul(*args, split=41)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("m", [1, 2048])
def test_op_replays_in_a_cuda_graph(m):
    args = _op_args(m, 4096, 2048, 4, torch.float16, seed=9)
    eager = int8_outlier_linear_silu_mul(*args, split=2048)
    assert torch.equal(replay_in_cuda_graph(lambda: int8_outlier_linear_silu_mul(*args, split=2048)), eager)
