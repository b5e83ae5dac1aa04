"""NF4: the QLoRA codebook, nearest-level block-wise quantization, double quantization."""

import pytest
import torch

from qcompiler.quant import (NF4_CODEBOOK, dequantize_blockwise_int8, dequantize_nf4, double_quantize,
                             quantize_nf4)

# The 16 levels as printed in the QLoRA paper's appendix / bitsandbytes' table (float32).
PAPER = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
         -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
         0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
         0.7229568362236023, 1.0]


def test_codebook_exact_values():
    assert NF4_CODEBOOK.dtype == torch.float32 and NF4_CODEBOOK.tolist() == PAPER


def test_codebook_is_the_normal_quantile_construction():
    """QLoRA: 8 positive and 7 negative quantiles of N(0, 1) at evenly spaced probabilities from
    offset = 0.9677083 to 1/2, an exact zero, all divided by the largest."""
    offset = 0.9677083
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    levels = levels / levels.max()
    # float32 rounding of the published table, and of linspace's end points
    assert torch.allclose(NF4_CODEBOOK.double(), levels, atol=2e-7), (NF4_CODEBOOK.double() - levels).abs().max()


def test_every_weight_maps_to_its_nearest_level():
    w = torch.randn(16, 200, generator=torch.Generator().manual_seed(1))
    codes, absmax, b = quantize_nf4(w, 64)
    assert b == 64 and absmax.shape == (16, 4) and int(codes.max()) <= 15
    per = absmax.repeat_interleave(64, dim=1)[:, :200]
    normed = w / per
    dist = (normed[..., None] - NF4_CODEBOOK).abs()
    chosen = dist.gather(-1, codes.long()[..., None]).squeeze(-1)
    assert (chosen <= dist.min(-1).values + 1e-6).all()  # nearest level (ties within float rounding)
    assert torch.allclose(dequantize_nf4(codes, absmax, 64), NF4_CODEBOOK[codes.long()] * per)
    # the block's absmax itself is a level (+-1), so it is reproduced exactly
    assert torch.equal(dequantize_nf4(codes, absmax, 64).abs().amax(dim=1), w.abs().amax(dim=1))


def test_zero_block_stays_zero():
    codes, absmax, _ = quantize_nf4(torch.zeros(2, 64), 64)
    assert torch.equal(dequantize_nf4(codes, absmax, 64), torch.zeros(2, 64))


@pytest.mark.parametrize("n", [1, 255, 256, 700])
def test_double_quantization_error_bound(n):
    absmax = torch.rand(n, generator=torch.Generator().manual_seed(n)) * 3 + 0.1
    q, a2, offset = double_quantize(absmax, 256)
    assert q.dtype == torch.int8 and q.shape == absmax.shape and a2.shape == (-(-n // 256),)
    assert torch.allclose(offset, absmax.mean().reshape(1))
    deq = dequantize_blockwise_int8(q, a2, offset, 256)
    bound = a2.repeat_interleave(256)[:n] / 254  # half an int8 step of the (absmax - mean) block
    assert ((deq - absmax).abs() <= bound * (1 + 1e-5) + 1e-7).all()


def test_matches_bitsandbytes():
    """Same codes and absmax as bitsandbytes' own NF4 (K a multiple of the block: same blocks);
    only the nibble order of the packed bytes differs (bitsandbytes puts the first code high)."""
    bnbf = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes not installed (pip install bitsandbytes)")
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(4))
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    codes, absmax, _ = quantize_nf4(w, 64)
    p = packed.reshape(-1).to(torch.int32)
    bnb_codes = torch.stack((p >> 4, p & 0xF), dim=-1).reshape(32, 256)
    assert torch.equal(codes.to(torch.int32), bnb_codes)
    assert torch.equal(absmax.reshape(-1), state.absmax)
    assert torch.equal(dequantize_nf4(codes, absmax, 64), bnbf.dequantize_4bit(packed, state))
