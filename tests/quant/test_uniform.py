"""Round-to-nearest group-wise quantization: every weight within half a step of its float value."""

import pytest
import torch

from qcompiler.errors import ConfigError
from qcompiler.quant import dequantize_uint, effective_group_size, quantize_uint
from qcompiler.quant.uniform import expand_groups


def _weights(n=24, k=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[3] *= 40.0          # one loud row
    w[5, :] = 0.0         # an all-zero row: its groups must stay exact
    w[7] = w[7].abs()     # a row with no negative value (asymmetric range must still hold 0)
    return w


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [0, 32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_error_within_half_a_step(bits, group_size, symmetric):
    w = _weights()
    u = quantize_uint(w, bits, group_size, symmetric)
    g = effective_group_size(w.shape[1], group_size)
    assert u.group_size == g and u.scales.shape == (24, -(-100 // g))
    assert u.codes.dtype == torch.uint8 and int(u.codes.max()) <= 2 ** bits - 1
    assert (u.zeros is None) == symmetric
    deq = dequantize_uint(u.codes, u.scales, u.zeros, bits, g)
    step = expand_groups(u.scales, g, w.shape[1])
    # round to nearest: at most half a step; 1e-5 relative slack for float32 rounding of w / s
    assert ((deq - w).abs() <= step * (0.5 + 1e-5)).all()
    assert torch.equal(deq[5], torch.zeros(100))  # zero weights stay exactly zero


def test_symmetric_codes_center_on_the_implicit_zero_point():
    u = quantize_uint(torch.tensor([[-2.0, -1.5, 0.0, 0.5, 2.0]]), 4, 0, True)
    assert u.codes.tolist() == [[1, 3, 8, 10, 15]]  # z = 8, s = 2/7: round(-5.25) = -5, round(1.75) = 2
    assert torch.allclose(u.scales, torch.tensor([[2.0 / 7]]))


def test_asymmetric_uses_the_whole_range():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    u = quantize_uint(w, 4, 0, False)
    assert u.zeros.tolist() == [[0]] and u.codes.tolist() == [[0, 5, 10, 15]]
    assert torch.allclose(dequantize_uint(u.codes, u.scales, u.zeros, 4, 4), w)


def test_effective_group_size():
    assert effective_group_size(384, 0) == 384
    assert effective_group_size(64, 128) == 64
    assert effective_group_size(384, 128) == 128
    with pytest.raises(ConfigError):
        effective_group_size(10, -1)
