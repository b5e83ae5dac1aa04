"""GPTQ (Frantar et al., 2022) on plain tensors: one linear layer, its weight and its Hessian.

GPTQ quantizes the columns (input dims) of ``W [N, K]`` one at a time and, after each, moves the
rounding error of that column onto the columns not yet quantized, weighted by the inverse
Hessian of the layer's reconstruction error ``||X W^T - X Q^T||^2``, whose Hessian is
``H = 2 X^T X`` over the calibration rows X of the layer's input. In the paper's form:

* ``H += percdamp * mean(diag H) * I`` (dampening), dead inputs (``H[j, j] = 0``) are zeroed;
* ``U = cholesky(H^-1, upper)``: row ``i`` of U holds what quantizing column ``i`` does to the
  later columns, so ``err = (w_i - q_i) / U[i, i]`` and ``W[:, i:] -= err * U[i, i:]``;
* lazy batches: inside a block of ``block_size`` columns the update touches only the block; the
  rest of W gets the block's errors at once (``W[:, i2:] -= Err @ U[i1:i2, i2:]``);
* act-order: columns are visited by decreasing ``diag(H)``. Group-wise scales are then fixed up
  front, per contiguous group of the *original* column order (what the storage format holds, no
  ``g_idx`` permutation table); without act-order each group's scale is taken from the updated
  weights when the walk reaches the group's first column, as in the reference implementation.

The codes use the same grid as round-to-nearest (:func:`qcompiler.quant.quantize_uint`): with
``H = I`` GPTQ returns exactly its codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qcompiler.errors import ConfigError, QCompilerError
from qcompiler.quant.uniform import UIntWeight, dequantize_uint, effective_group_size, quantize_uint

__all__ = ["HessianAccumulator", "GPTQResult", "gptq_quantize"]


class HessianAccumulator:
    """Running ``H = 2/n * sum x x^T`` over every row seen (float32, on the rows' device)."""

    def __init__(self, k: int, device: torch.device | str = "cpu"):
        self.hessian = torch.zeros(k, k, dtype=torch.float32, device=device)
        self.rows = 0

    def add(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1, self.hessian.shape[0]).float()
        n = flat.shape[0]
        if n == 0:
            return
        self.hessian *= self.rows / (self.rows + n)
        self.rows += n
        flat = flat.to(self.hessian.device) * math.sqrt(2.0 / self.rows)
        self.hessian += flat.t() @ flat


@dataclass(frozen=True)
class GPTQResult:
    weight: UIntWeight   # codes [N, K] in the original column order, scales/zeros per contiguous group
    dequantized: Tensor  # [N, K] float32, (q - z) * s: what the layer computes with
    loss: float          # GPTQ's own estimate of the added error, sum((w - q)^2 / U[i, i]^2) / 2


def _group_params(w: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Step and zero point (float, ``[N]``) of one group, the way round-to-nearest picks them."""
    u = quantize_uint(w, bits, 0, symmetric)
    zero = u.zeros[:, 0].float() if u.zeros is not None else torch.full_like(u.scales[:, 0], 2.0 ** (bits - 1))
    return u.scales[:, 0], zero


def _inverse_cholesky(h: Tensor, percdamp: float) -> Tensor:
    """``cholesky(H^-1, upper=True)`` without forming ``H^-1``: with ``J`` the exchange matrix and
    ``J H J = L L^T``, ``H^-1 = (J L^-1 J)^T (J L^-1 J)`` and ``J L^-1 J`` is upper triangular.
    (``torch.cholesky_inverse`` is ~20x slower on the CPU.)"""
    k = h.shape[0]
    h = h + percdamp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype, device=h.device)
    low, info = torch.linalg.cholesky_ex(h.flip(0, 1))
    if int(info) != 0:
        raise QCompilerError(f"GPTQ: the layer's Hessian is not positive definite after dampening "
                             f"(minor {int(info)} of {k})",
                             hint="raise percdamp (e.g. 0.1) or give more calibration data")
    eye = torch.eye(k, dtype=h.dtype, device=h.device)
    return torch.linalg.solve_triangular(low, eye, upper=False).flip(0, 1)


def gptq_quantize(w: Tensor, hessian: Tensor, bits: int, group_size: int = 128, symmetric: bool = True,
                  percdamp: float = 0.01, block_size: int = 128, act_order: bool = False) -> GPTQResult:
    """Quantizes ``w [N, K]`` against ``hessian [K, K]`` (from :class:`HessianAccumulator`).

    Runs on ``w``'s device in float32; returns codes in ``qcompiler.quant``'s uint layout.
    """
    if w.dim() != 2 or hessian.shape != (w.shape[1], w.shape[1]):
        raise ConfigError(f"GPTQ: weight {tuple(w.shape)} and Hessian {tuple(hessian.shape)} do not match")
    if not (0 <= percdamp < 10) or block_size < 1:
        raise ConfigError(f"GPTQ: percdamp must be in [0, 10) and block_size >= 1, got {percdamp}, {block_size}")
    n, k = w.shape
    g = effective_group_size(k, group_size)
    groups = -(-k // g)
    W = w.detach().float().clone()
    H = hessian.detach().to(W.device, torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0  # an input never seen in calibration: its weights cannot be fitted

    scales = W.new_zeros(n, groups)
    zeros = W.new_zeros(n, groups)
    if act_order:  # groups fixed up front, contiguous in the original order
        for j in range(groups):
            scales[:, j], zeros[:, j] = _group_params(W[:, j * g:(j + 1) * g], bits, symmetric)
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        perm = torch.arange(k, device=W.device)
    U = _inverse_cholesky(H, percdamp)

    # Work on W^T so that a column of W is a contiguous row: the rank-1 updates stream memory.
    # The column loop is the hot path (one Python iteration per input dim): few ops per column.
    Wt = W.t().contiguous()
    codes = torch.zeros_like(Wt)  # symmetric: centred codes, shifted by 2^(bits-1) at the end
    loss = W.new_zeros(())
    half = 2 ** (bits - 1)
    lo, hi = (-(half - 1), half - 1) if symmetric else (0, 2 ** bits - 1)
    if act_order:  # each visited column's own group's step and zero point, in visiting order
        col_group = perm // g
        s_cols, z_cols = scales[:, col_group].t().contiguous(), zeros[:, col_group].t().contiguous()
    s_col = z_col = None
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = Wt[i1:i2].clone()
        err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        inv_d = (1.0 / U1.diagonal()).tolist()
        for i in range(i2 - i1):
            col = i1 + i
            if act_order:
                s_col, z_col = s_cols[col], z_cols[col]
            elif col % g == 0:  # a new group: its step from the weights as updated so far
                window = torch.cat([W1[i:], Wt[i2:]], dim=0)[:g].t()
                s_col, z_col = _group_params(window, bits, symmetric)
                scales[:, col // g], zeros[:, col // g] = s_col, z_col
            w_col = W1[i]
            q = torch.round(w_col / s_col)  # the rounding of quantize_uint, to the bit
            if symmetric:
                dq = q.clamp_(lo, hi) * s_col
            else:
                dq = (q.add_(z_col).clamp_(lo, hi) - z_col).mul_(s_col)
            codes[col] = q
            e = (w_col - dq).mul_(inv_d[i])
            W1[i:].addmm_(U1[i, i:, None], e[None, :], alpha=-1.0)  # a BLAS call: ~7x addr_ on CPU
            err1[i] = e
        loss += err1.square().sum() / 2
        Wt[i2:] -= U[i1:i2, i2:].t() @ err1
    if symmetric:
        codes += half

    out = torch.empty_like(W)
    out[:, perm] = codes.t()
    codes_u8 = out.to(torch.uint8)
    zeros_u8 = None if symmetric else zeros.round().to(torch.uint8)
    result = UIntWeight(codes_u8, scales.contiguous(), zeros_u8, bits, g)
    return GPTQResult(result, dequantize_uint(codes_u8, result.scales, zeros_u8, bits, g), float(loss))
