"""``dequantize_weight``: the dense 16-bit W of the large-M path, for every stored format.

UINT and plain NF4 are exact in float16: ``(q - z) * s`` / ``level * absmax`` is one float32
product (as in the reference), rounded once to the 16-bit dtype. One 16-bit ulp is allowed
(``eps * |w|``) where that rounding may differ: for double-quantized absmax values (a float32
division on the device may differ from torch's by a float32 ulp), and for bfloat16 (Triton's CPU
interpreter truncates float32 -> bfloat16, the GPU rounds to nearest).
"""

from __future__ import annotations

import pytest
import torch
from weight_only_problems import FORMATS, make_problem

from qcompiler.backends.triton.dequantize_weight import dequantize_weight

# K = 301: odd (half-filled last byte) and not a multiple of any group; N = 70: not a multiple of
# BLOCK_N.
K, N = 301, 70


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fmt", list(FORMATS), ids=str)
def test_dequantize_weight(fmt, dtype):
    p = make_problem(FORMATS[fmt], N, K, dtype, seed=11)
    w = dequantize_weight(p.operand(), dtype)
    assert w.shape == (N, K) and w.dtype == dtype
    ref = p.w_deq.float().to(dtype)
    if FORMATS[fmt].double_quant or dtype == torch.bfloat16:
        ulp = torch.finfo(dtype).eps * ref.double().abs()
        assert ((w.double() - ref.double()).abs() <= ulp).all()
    else:
        assert torch.equal(w, ref)


def test_dequantize_weight_rejects_float32():
    p = make_problem(FORMATS["w4-g128"], 8, 32, torch.float16, seed=0)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        dequantize_weight(p.operand(), torch.float32)
