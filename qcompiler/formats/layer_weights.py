"""One checkpoint linear, converted to the layout qcompiler's ops take.

Every reader (GPTQ, AWQ, compressed-tensors) turns a layer's stored tensors into one of these:

* :class:`UIntWeights`: weight-only, ``W[n, k] = (codes[n, k] - zeros[n, k // g]) * scales[n, k // g]``
  (``qcompiler::weight_only_linear``'s arithmetic); ``perm`` is the K permutation that makes
  act-order groups consecutive: the layer computes ``x[..., perm] @ W[:, perm].T``, and the codes,
  scales and zeros here are already in permuted order.
* :class:`Int8Weights`: W8A8, ``W[n, k] = q[n, k] * w_absmax[n] / 127`` (``qcompiler::int8_linear``),
  activations quantized per row at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompiler.quant import effective_group_size

__all__ = ["UIntWeights", "Int8Weights", "LayerWeights", "act_order_permutation"]


@dataclass
class UIntWeights:
    codes: torch.Tensor            # [N, K] uint8, 0 .. 2^bits - 1, in permuted K order when perm is set
    scales: torch.Tensor           # [N, G] float32
    zeros: torch.Tensor | None     # [N, G] uint8, None: the implicit 2^(bits - 1)
    bits: int
    group_size: int                # 0: one group per output channel
    perm: torch.Tensor | None = None  # [K] int64: input dim j of the stored weight is x's dim perm[j]

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[N, K]`` weight in the model's (unpermuted) K order."""
        n, k = self.codes.shape
        g = effective_group_size(k, self.group_size)
        idx = torch.arange(k) // g
        z = self.zeros.float()[:, idx] if self.zeros is not None else float(2 ** (self.bits - 1))
        w = (self.codes.float() - z) * self.scales.float()[:, idx]
        if self.perm is None:
            return w
        out = torch.empty_like(w)
        out[:, self.perm] = w
        return out


@dataclass
class Int8Weights:
    qweight: torch.Tensor          # [N, K] int8
    w_absmax: torch.Tensor         # [N] float32: W ≈ q * w_absmax / 127

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * (self.w_absmax.float()[:, None] / 127.0)


LayerWeights = UIntWeights | Int8Weights


def act_order_permutation(g_idx: torch.Tensor, group_size: int, groups: int) -> torch.Tensor | None:
    """The stable sort of ``g_idx`` when that makes every group ``group_size`` consecutive input
    dims (GPTQ's act-order checkpoints); None when ``g_idx`` is already ``k // group_size``.
    Raises ValueError when no permutation does (a group with the wrong number of members)."""
    k = g_idx.numel()
    want = torch.arange(k) // group_size
    g_idx = g_idx.long()
    if torch.equal(g_idx, want):
        return None
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= groups:
        raise ValueError(f"g_idx values must lie in 0..{groups - 1}, got {int(g_idx.min())}..{int(g_idx.max())}")
    perm = torch.sort(g_idx, stable=True).indices
    if not torch.equal(g_idx[perm], want):
        counts = torch.bincount(g_idx, minlength=groups).tolist()
        raise ValueError(f"g_idx gives groups of sizes {counts[:8]}..., not {group_size} input dims each")
    return perm
