"""4-bit packing: the byte layout ONNX Runtime's MatMulNBits uses (even k in the low nibble)."""

import pytest
import torch

from qcompiler.errors import UnsupportedError
from qcompiler.quant import pack_int4, unpack_int4


def test_layout_low_nibble_is_even_k():
    codes = torch.tensor([[1, 2, 3], [15, 0, 7]], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 2)  # odd K padded with one code
    assert packed.tolist() == [[0x21, 0x03], [0x0F, 0x07]]


@pytest.mark.parametrize("k", [1, 2, 7, 64, 129])
def test_round_trip(k):
    codes = torch.randint(0, 16, (5, k), generator=torch.Generator().manual_seed(k), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (5, (k + 1) // 2)
    assert torch.equal(unpack_int4(packed, k), codes)


def test_empty():
    codes = torch.empty(3, 0, dtype=torch.uint8)
    assert pack_int4(codes).shape == (3, 0) and unpack_int4(pack_int4(codes), 0).shape == (3, 0)


@pytest.mark.parametrize("bad", [torch.tensor([[16]]), torch.tensor([[-1]]), torch.tensor([[0.5]])])
def test_rejects_what_does_not_fit_a_nibble(bad):
    with pytest.raises(UnsupportedError):
        pack_int4(bad)
