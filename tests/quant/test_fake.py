"""Fake quantization must decode to exactly what the stored formats and the int8 ops compute."""

import math

import pytest
import torch

from qcompiler.ops import quantize_weight
from qcompiler.quant import dequantize_uint, quantize_uint
from qcompiler.quant.fake import fake_quantize_int8, fake_quantize_uint

_ops = torch.ops.qcompiler


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [0, 7, 32, 128])
@pytest.mark.parametrize("bits", [4, 8])
def test_uint_round_trip_is_bit_exact(bits, group_size, symmetric):
    w = torch.randn(33, 301, generator=torch.Generator().manual_seed(0))
    w[3] = 0.0
    w[4, :50] = 0.0
    w[5] = w[5].abs()
    u = quantize_uint(w, bits, group_size, symmetric)
    assert torch.equal(fake_quantize_uint(w, bits, group_size, symmetric),
                       dequantize_uint(u.codes, u.scales, u.zeros, bits, u.group_size))


def test_uint_keeps_dtype():
    w = torch.randn(8, 64).to(torch.bfloat16)
    assert fake_quantize_uint(w, 4, 32, True).dtype == torch.bfloat16


def test_int8_matches_the_activation_and_weight_quantizers():
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(1))
    x[..., 7] *= 30  # an outlier column
    q, s, _ = _ops.quantize_rowwise(x, torch.empty(0, dtype=torch.long))
    # the op's dequantization is q * s / 127; the fake op computes round(x * 127 / s) * (s / 127)
    assert torch.allclose(fake_quantize_int8(x, True), q.float() * s / 127, rtol=1e-6, atol=1e-7)
    q, s = _ops.quantize_tensorwise(x)
    assert torch.allclose(fake_quantize_int8(x, False), q.float() * s / 127, rtol=1e-6, atol=1e-7)
    w = torch.randn(16, 40)
    qw, sw = quantize_weight(w, per_channel=True)
    assert torch.allclose(fake_quantize_int8(w, True), qw.float() * sw[:, None] / 127, rtol=1e-6, atol=1e-7)


def test_int8_outlier_columns_stay_exact_and_leave_the_scales():
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    x[:, 7] *= 30
    y = fake_quantize_int8(x, True, 6.0)
    q, s, mask = _ops.quantize_rowwise_dynamic(x, 6.0)
    assert mask.nonzero().flatten().tolist() == [7]
    assert torch.equal(y[:, 7], x[:, 7])
    keep = ~mask
    assert torch.allclose(y[:, keep], (q.float() * s / 127)[:, keep], rtol=1e-6, atol=1e-7)
    assert torch.equal(fake_quantize_int8(x, True, math.inf), fake_quantize_int8(x, True))
