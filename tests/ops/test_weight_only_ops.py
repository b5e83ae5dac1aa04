"""The weight-only ops against a float64 reference: exact use of the stored weight, and an error
bound in quantization steps against the original float weight."""

import pytest
import torch

from qcompiler.quant import double_quantize, pack_int4, quantize_nf4, quantize_uint
from qcompiler.quant.uniform import expand_groups

ops = torch.ops.qcompiler


def _problem(n=33, k=75, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 5, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)


def _uint_args(w, bits, group_size, symmetric):
    u = quantize_uint(w, bits, group_size, symmetric)
    qweight = pack_int4(u.codes) if bits == 4 else u.codes
    return u, qweight


@pytest.mark.parametrize("bits,group_size,symmetric", [(8, 0, True), (8, 32, False), (4, 32, True),
                                                       (4, 16, False), (4, 0, True)])
def test_weight_only_linear_matches_float64_reference(bits, group_size, symmetric):
    x, w, b = _problem()  # K = 75: odd, and not a multiple of the group size
    u, qweight = _uint_args(w, bits, group_size, symmetric)
    y = ops.weight_only_linear(x, qweight, u.scales, u.zeros, b, bits, u.group_size)
    assert y.shape == (3, 5, 33) and y.dtype == x.dtype

    z = u.zeros.double() if u.zeros is not None else torch.full_like(u.scales, 2 ** (bits - 1)).double()
    w_deq = (u.codes.double() - expand_groups(z, u.group_size, 75)) * expand_groups(u.scales.double(), u.group_size, 75)
    ref = x.double() @ w_deq.t() + b.double()
    # the op dequantizes and multiplies in float32: float32 rounding of a 75-term dot product
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5)

    # against the original float weight: each weight is off by at most half its group's step
    bound = (x.double().abs() @ (0.5 * expand_groups(u.scales.double(), u.group_size, 75)).t())
    exact = x.double() @ w.double().t() + b.double()
    assert ((y.double() - exact).abs() <= bound * (1 + 1e-4) + 1e-5).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weight_only_linear_keeps_half_precision_activations(dtype):
    x, w, b = _problem()
    u, qweight = _uint_args(w, 4, 32, True)
    y = ops.weight_only_linear(x.to(dtype), qweight, u.scales, None, b.to(dtype), 4, 32)
    ref = ops.weight_only_linear(x.to(dtype).float(), qweight, u.scales, None, b.to(dtype).float(), 4, 32)
    assert y.dtype == dtype
    # only the final rounding to the 16-bit output differs: a few ulps of the output's magnitude
    assert torch.allclose(y.float(), ref, rtol=2e-2, atol=2e-2)


def test_single_token_and_one_output_channel():
    x, w, _ = _problem(n=1, k=8)
    u, qweight = _uint_args(w, 4, 0, False)
    y = ops.weight_only_linear(x[:1, :1], qweight, u.scales, u.zeros, None, 4, u.group_size)
    assert y.shape == (1, 1, 1)


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_linear_matches_float64_reference(double_quant):
    x, w, b = _problem(k=130)
    codes, absmax, bs = quantize_nf4(w, 64)
    if double_quant:
        q, a2, off = double_quantize(absmax)
        absmax_in = ops.dequantize_blockwise_int8(q, a2, off, 256)
        assert absmax_in.shape == absmax.shape and absmax_in.dtype == torch.float32
    else:
        absmax_in = absmax
    y = ops.nf4_linear(x, pack_int4(codes), absmax_in, b, bs)
    from qcompiler.quant import NF4_CODEBOOK
    w_deq = NF4_CODEBOOK.double()[codes.long()] * expand_groups(absmax_in.double(), 64, 130)
    ref = x.double() @ w_deq.t() + b.double()
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5)  # float32 dot products


def test_ops_pass_opcheck():
    """Schema, fake (meta) implementations and autograd registration agree with the eager kernels."""
    x, w, b = _problem(n=8, k=24)
    u, qweight = _uint_args(w, 4, 8, False)
    torch.library.opcheck(ops.weight_only_linear.default, (x, qweight, u.scales, u.zeros, b, 4, 8))
    torch.library.opcheck(ops.weight_only_linear.default, (x, u.codes, u.scales, None, None, 8, 8))
    codes, absmax, _ = quantize_nf4(w, 8)
    torch.library.opcheck(ops.nf4_linear.default, (x, pack_int4(codes), absmax, b, 8))
    q, a2, off = double_quantize(absmax)
    torch.library.opcheck(ops.dequantize_blockwise_int8.default, (q, a2, off, 256))
