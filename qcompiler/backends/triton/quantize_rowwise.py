"""``qcompiler::quantize_rowwise`` in one pass over X.

Each program owns ``BLOCK_M`` rows. When a whole row fits in one ``BLOCK_K`` tile (K <= 8192 with
the default configs) the row is read once: absmax over the non-outlier columns, quantize, store
int8 and the row scale, then gather the outlier columns (from L1/L2) into a small ``[M, n]``
matrix in X's dtype. Longer rows take a second pass over X, which mostly hits L2.

The outlier columns come as a ``[K]`` int8 mask (1 = outlier), built once per weight by the
lowering (or here, from ``outlier_idx``, when not given): comparing every column against an index
list would cost ``n_out`` compares per element.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._config import TunedLauncher, interpreting, make_config, pick_configs
from qcompiler.backends.triton._rounding import quantize_tile

__all__ = ["quantize_rowwise", "outlier_mask_from_idx", "quantize_rows_into"]

# Same floor as the reference op: a row of zeros must not get a zero scale.
_TINY = 1e-12


def _quantize_rowwise_configs() -> list[triton.Config]:
    # TILE = elements of X held per program; memory-bound, so only size and warps matter.
    # Small tiles = many programs per SM in flight, which a load-reduce-store kernel needs.
    gpu = [make_config(TILE=4096, num_warps=4, num_stages=1),
           make_config(TILE=8192, num_warps=4, num_stages=1),
           make_config(TILE=4096, num_warps=2, num_stages=1),
           make_config(TILE=8192, num_warps=8, num_stages=1),
           make_config(TILE=16384, num_warps=16, num_stages=1),
           # More bytes in flight per SM: whole 4096-wide rows x 4 with 8 warps; two 14336-wide
           # (down-proj) rows in one pass instead of two passes over 8192-wide tiles.
           make_config(TILE=16384, num_warps=8, num_stages=1),
           make_config(TILE=32768, num_warps=16, num_stages=1)]
    return pick_configs(gpu, make_config(TILE=4096, num_warps=4, num_stages=1))


def _block_k(args) -> int:
    return min(triton.next_power_of_2(max(args["K"], 1)), args["TILE"])


# Whole rows in one tile when they fit; BLOCK_M rows share the TILE budget.
_BLOCK_SHAPE = {
    "BLOCK_K": _block_k,
    "BLOCK_M": lambda args: max(1, args["TILE"] // _block_k(args)),
    "ONE_PASS": lambda args: args["K"] <= _block_k(args),
}


@triton.autotune(configs=_quantize_rowwise_configs(), key=["K", "HAS_MASK", "GATHER"])
@triton.heuristics(values=_BLOCK_SHAPE)
@triton.jit
def _quantize_rowwise_kernel(
    x_ptr, mask_ptr, idx_ptr, xq_ptr, scale_ptr, xo_ptr,
    M, K, n_out,
    stride_xm, stride_xk, stride_qm, stride_qk, stride_om, stride_ok,
    HAS_MASK: tl.constexpr, GATHER: tl.constexpr, EXACT_MUL: tl.constexpr, TILE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, ONE_PASS: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    q_rows = xq_ptr + offs_m[:, None] * stride_qm

    if ONE_PASS:
        k_ok = offs_k < K
        x = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)
        if HAS_MASK:
            is_out = tl.load(mask_ptr + offs_k, mask=k_ok, other=0) != 0
            x = tl.where(is_out[None, :], 0.0, x)
        amax = tl.max(tl.abs(x), axis=1)
    else:
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < K
            x = tl.load(x_rows + kk[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0).to(tl.float32)
            if HAS_MASK:
                is_out = tl.load(mask_ptr + kk, mask=k_ok, other=0) != 0
                x = tl.where(is_out[None, :], 0.0, x)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))

    scale = tl.maximum(amax, 1e-12)
    # 127 * (1/scale), rounded like torch's `127.0 / scale` (reciprocal, then multiply).
    inv = tl.math.div_rn(1.0, scale) * 127.0
    tl.store(scale_ptr + offs_m, scale, mask=row_ok)

    if ONE_PASS:
        k_ok = offs_k < K
        tl.store(q_rows + offs_k[None, :] * stride_qk, quantize_tile(x, inv[:, None], EXACT_MUL),
                 mask=row_ok[:, None] & k_ok[None, :])
    else:
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < K
            x = tl.load(x_rows + kk[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0).to(tl.float32)
            if HAS_MASK:
                is_out = tl.load(mask_ptr + kk, mask=k_ok, other=0) != 0
                x = tl.where(is_out[None, :], 0.0, x)
            tl.store(q_rows + kk[None, :] * stride_qk, quantize_tile(x, inv[:, None], EXACT_MUL),
                     mask=row_ok[:, None] & k_ok[None, :])

    if GATHER:
        for o0 in range(0, n_out, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            o_ok = offs_o < n_out
            col = tl.load(idx_ptr + offs_o, mask=o_ok, other=0)
            ok = row_ok[:, None] & o_ok[None, :]
            v = tl.load(x_rows + col[None, :] * stride_xk, mask=ok, other=0.0)
            tl.store(xo_ptr + offs_m[:, None] * stride_om + offs_o[None, :] * stride_ok, v, mask=ok)


_LAUNCH = TunedLauncher(_quantize_rowwise_kernel, "quantize_rowwise")


def outlier_mask_from_idx(outlier_idx: Tensor, k: int) -> Tensor:
    """``[K]`` int8 mask with 1 at the outlier columns (what the kernels read)."""
    mask = torch.zeros(k, dtype=torch.int8, device=outlier_idx.device)
    if outlier_idx.numel():
        mask.index_fill_(0, outlier_idx.to(torch.int64), 1)
    return mask


def quantize_rows_into(x2: Tensor, mask: Optional[Tensor], outlier_idx: Optional[Tensor],
                       xq: Tensor, scale: Tensor, x_out: Optional[Tensor]) -> None:
    """Launch on a 2-D ``x2 [M, K]``; outputs preallocated. Shared by the static and dynamic ops."""
    m, k = x2.shape
    if m == 0:
        return
    n_out = 0 if x_out is None else x_out.shape[1]
    gather = n_out > 0
    dummy = xq  # never dereferenced: the constexpr flags compile those loads away
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)  # noqa: E731
    key = (k, mask is not None, gather, x2.dtype, x_out.dtype if gather else None)
    _LAUNCH(key, grid,
        x2, mask if mask is not None else dummy, outlier_idx if gather else dummy,
        xq, scale, x_out if gather else dummy,
        m, k, n_out,
        x2.stride(0), x2.stride(1), xq.stride(0), xq.stride(1),
        x_out.stride(0) if gather else 0, x_out.stride(1) if gather else 0,
        HAS_MASK=mask is not None, GATHER=gather, EXACT_MUL=not interpreting(), BLOCK_O=16,
    )


def quantize_rowwise(x: Tensor, outlier_idx: Tensor,
                     outlier_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Triton ``quantize_rowwise``: same outputs as ``torch.ops.qcompiler.quantize_rowwise``.

    ``outlier_mask`` (``[K]`` int8/bool, 1 at ``outlier_idx``) may be passed to skip building it.
    """
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"quantize_rowwise: x must be float16/bfloat16/float32, got {x.dtype}")
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    n_out = outlier_idx.numel()
    xq = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    x_out = torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    if k == 0:
        scale.fill_(_TINY)
        return xq.reshape(*lead, k), scale.reshape(*lead, 1), x_out.reshape(*lead, 0)
    mask = None
    if n_out:
        mask = outlier_mask if outlier_mask is not None else outlier_mask_from_idx(outlier_idx, k)
        mask = mask.view(torch.int8) if mask.dtype == torch.bool else mask
    quantize_rows_into(x2, mask, outlier_idx, xq, scale, x_out if n_out else None)
    return xq.reshape(*lead, k), scale.reshape(*lead, 1), x_out.reshape(*lead, n_out)
