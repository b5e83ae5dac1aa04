"""One-row (M = 1, decode) weight-only GEMV: ``y = x @ W.T (+ x[idx] @ W_out.T) + bias`` with W in
8 or 4 bits (UINT, or int8 stored signed as int8-outlier keeps it) or NF4, x one 16-bit row.

Why a second kernel next to :func:`weight_only_gemv`'s CUDA-core form: that one holds W's tile as
``[BLOCK_K / PACK, BLOCK_N]`` and keeps a float32 accumulator of the same size, so every weight
pays a product *and* a per-element scale FMA, and x's tile is re-split per nibble plane. Here:

* W's tile is ``[BLOCK_N, BLOCK_KB]`` bytes, K contiguous (16-byte loads), several rows per thread,
  so x's values (loaded once per tile, float32) are shared by those rows;
* **one scale per group and row**: a tile holds whole groups; the products of a group are summed
  first (FMA chains in a thread, then a short shuffle tree) and the ``[BLOCK_N]`` sums are scaled
  once - no per-element scale multiply. One group per row (per-channel int8) keeps an elementwise
  accumulator instead and scales in the epilogue;
* **magic-number dequantization**: ``q | 0x4B000000`` is the float ``2**23 + q`` exactly, so
  ``q - z`` is one OR and one FADD (no int-to-float convert); with ``ASM`` (CUDA only) one ``prmt``
  per byte builds that float from the packed bytes (``tl.inline_asm_elementwise``; the CPU
  interpreter cannot run PTX, so the pure-Triton form is what the CI tests cover);
* **signed int8** (``FLIP``): int8-outlier's codes are ``q + 128`` after one XOR with 0x80, so it
  runs through the same kernel with zero point 128 and ``S_DIV = 127`` (its scale is
  ``w_scale / 127``); its few fp16 outlier columns are added in the epilogue of the program that
  finishes each output tile (``HAS_OUTLIERS``), so the decomposition costs no extra launch;
* **4-bit codes with a float16 x on CUDA**: paired float16 arithmetic (HFMA2), ~2.4 instructions
  per weight instead of ~4 (:mod:`.weight_only_gemv_row_tiles`, its tolerance and overflow check);
* NF4 levels on CUDA from a 16-entry table in registers (``prmt`` byte permutes,
  :mod:`._nf4_register_table`), no gather per weight;
* split-K as in :mod:`.weight_only_gemv`: partial sums in a per-call float32 workspace, the
  last-arriving program reduces them in split order (deterministic) and resets its counter (a
  persistent buffer, :mod:`._split_k_counters`: no zero-fill launch). Most layers need no split:
  narrow tiles (``BLOCK_N`` 2-16) give enough programs from N alone;
* the measured config of known decode layer shapes (:mod:`.weight_only_gemv_configs`), else the
  autotuner.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from qcompiler.backends.triton._magic_dequant import asm_available
from qcompiler.backends.triton._config import TunedLauncher, make_config, pick_configs
from qcompiler.backends.triton._split_k_counters import split_k_counters
from qcompiler.backends.triton._weight_operand import FMT_NF4, WeightOperand
from qcompiler.backends.triton.weight_only_gemv_configs import row_table_config, weight_kind
from qcompiler.backends.triton.weight_only_gemv_row_tiles import f32_tiles, group_scale, half2_tiles

__all__ = ["weight_only_gemv_row", "row_supported", "row_tile_ok"]


def _row_configs() -> list[triton.Config]:
    # BLOCK_KB = bytes of a row per tile (64 = one g128 int4 group, 32 = one b64 NF4 block; the
    # pruner keeps only tiles that hold whole groups). 16 B per thread along K, the rest of the
    # threads along N: BLOCK_N / (32 * warps * 16 / BLOCK_KB) rows per thread share x's values.
    # The configs that won some layer in benchmarks/sweep_gemv.py on an H200 (2026-12-02; 8B and
    # 1.1B Llama shapes and their fused q/k/v, gate/up; those shapes take the measured config from
    # weight_only_gemv_configs and skip this list). Narrow tiles without a split (BLOCK_N 2-16,
    # long K) win most layers: N alone gives one program per SM or more, and there are no partial
    # sums, counters or last-arriver epilogue; 32 x 256 B split-K tiles win small-N long-K layers.
    c = make_config
    asm = asm_available()  # prmt dequantization: 5-20% faster than the Triton-op form on the H200
    gpu = [c(BLOCK_N=n, BLOCK_KB=kb, SPLIT_K=s, ASM=asm, num_warps=w, num_stages=1)
           for n, kb, w, s in [(32, 256, 4, 4), (32, 256, 4, 1), (32, 256, 4, 2), (32, 256, 4, 8),
                               (64, 128, 4, 4), (64, 128, 4, 8), (8, 256, 2, 1),
                               (2, 2048, 4, 1), (4, 1024, 4, 1), (8, 512, 4, 1), (16, 512, 4, 1), (16, 256, 4, 1)]]
    return pick_configs(gpu, c(BLOCK_N=16, BLOCK_KB=64, SPLIT_K=2, ASM=False, num_warps=4))


def row_tile_ok(group: int, groups: int, pack: int, block_kb: int) -> bool:
    """A tile of ``block_kb`` bytes holds whole groups (or there is one group per row)."""
    return groups <= 1 or (block_kb * pack) % group == 0 and (block_kb * pack) // group <= 8


_SCRATCH_BYTES = 64 << 20


def _prune(configs, named_args, **kwargs):
    a = {**named_args, **kwargs}
    ok = [c for c in configs if row_tile_ok(a["GROUP"], a["G"], a["PACK"], c.kwargs["BLOCK_KB"])]
    cap = max(1, _SCRATCH_BYTES // (4 * max(a["N"], 1)))
    fit = [c for c in ok if c.kwargs["SPLIT_K"] <= min(cap, max(1, -(-a["KB"] // c.kwargs["BLOCK_KB"])))]
    return fit or [c for c in ok if c.kwargs["SPLIT_K"] == 1] or ok or list(configs)


# Ints that vary by shape but not the code: one compiled kernel for all of them.
@triton.jit(do_not_specialize=["G", "GROUP", "n_out", "SPLIT_K"])
def _weight_only_gemv_row_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, cb_ptr, dqs_ptr, dqo_ptr, idx_ptr, wo_ptr, b_ptr, y_ptr, part_ptr, lock_ptr,
    N, K, KB, G, GROUP, n_out, stride_xk, stride_won, stride_wok,
    FMT: tl.constexpr, PACK: tl.constexpr, ZERO: tl.constexpr, HAS_ZEROS: tl.constexpr,
    DQ: tl.constexpr, DQ_BLOCK: tl.constexpr, FLIP: tl.constexpr, S_DIV: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_OUTLIERS: tl.constexpr, BLOCK_O: tl.constexpr,
    SPLIT_K, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, SPLIT: tl.constexpr, ASM: tl.constexpr,
    HALF2: tl.constexpr,
    ONE_GROUP: tl.constexpr, EVEN_KB: tl.constexpr, GB: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rn = offs_n % N  # wrapped rows keep the W loads unmasked; the store drops them
    dq_off = 0.0
    if DQ:
        dq_off = tl.load(dqo_ptr)
    n_tiles = tl.cdiv(KB, BLOCK_KB)
    per_split = tl.cdiv(n_tiles, SPLIT_K)
    t_lo = pid_k * per_split
    t_hi = tl.minimum(t_lo + per_split, n_tiles)
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * KB
    if HALF2 and ASM and EVEN_KB:
        out = half2_tiles(x_ptr, w_ptr, s_ptr, z_ptr, dqs_ptr, dq_off, rn, t_lo, t_hi, KB, G, ZERO, HAS_ZEROS, DQ,
                          DQ_BLOCK, BLOCK_N, BLOCK_KB, ONE_GROUP, GB)
        # A float16 lane overflowed (|x| in the thousands) or x is not finite: the float32 form
        # decides (the same inf / nan when x itself is not finite).
        if tl.max(((out != out) | (tl.abs(out) == float("inf"))).to(tl.int32), axis=0) > 0:
            out = f32_tiles(x_ptr, w_rows, s_ptr, z_ptr, cb_ptr, dqs_ptr, dq_off, rn, t_lo, t_hi, K, KB, G,
                            stride_xk, FMT, PACK, ZERO, HAS_ZEROS, DQ, DQ_BLOCK, FLIP, BLOCK_N, BLOCK_KB, ASM,
                            ONE_GROUP, EVEN_KB, GB)
    else:
        out = f32_tiles(x_ptr, w_rows, s_ptr, z_ptr, cb_ptr, dqs_ptr, dq_off, rn, t_lo, t_hi, K, KB, G, stride_xk,
                        FMT, PACK, ZERO, HAS_ZEROS, DQ, DQ_BLOCK, FLIP, BLOCK_N, BLOCK_KB, ASM, ONE_GROUP, EVEN_KB,
                        GB)
    if not SPLIT:
        _finish(out, x_ptr, s_ptr, dqs_ptr, dq_off, idx_ptr, wo_ptr, b_ptr, y_ptr, rn, offs_n, n_ok, G, n_out,
                stride_xk, stride_won, stride_wok, ONE_GROUP, DQ, DQ_BLOCK, S_DIV, HAS_BIAS, HAS_OUTLIERS,
                BLOCK_O)
    else:
        tl.store(part_ptr + pid_k * N + offs_n, out, mask=n_ok)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        lock = lock_ptr + pid_n
        arrived = tl.atomic_add(lock, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for s_i in range(SPLIT_K):  # fixed order: the same bits on every run
                total += tl.load(part_ptr + s_i * N + offs_n, mask=n_ok, other=0.0, cache_modifier=".cg")
            _finish(total, x_ptr, s_ptr, dqs_ptr, dq_off, idx_ptr, wo_ptr, b_ptr, y_ptr, rn, offs_n, n_ok, G,
                    n_out, stride_xk, stride_won, stride_wok, ONE_GROUP, DQ, DQ_BLOCK, S_DIV, HAS_BIAS,
                    HAS_OUTLIERS, BLOCK_O)
            tl.atomic_xchg(lock, 0)


@triton.jit
def _finish(out, x_ptr, s_ptr, dqs_ptr, dq_off, idx_ptr, wo_ptr, b_ptr, y_ptr, rn, offs_n, n_ok, G, n_out,
            stride_xk, stride_won, stride_wok, ONE_GROUP: tl.constexpr, DQ: tl.constexpr,
            DQ_BLOCK: tl.constexpr, S_DIV: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_OUTLIERS: tl.constexpr,
            BLOCK_O: tl.constexpr):
    """Per-channel scale (one group per row), outlier columns, bias, store in y's dtype."""
    if ONE_GROUP:
        s = group_scale(s_ptr, dqs_ptr, dq_off, rn * G, n_ok | True, DQ, DQ_BLOCK)
        if S_DIV != 1:
            s = s / S_DIV
        out = out * s
    if HAS_OUTLIERS:
        for o0 in range(0, n_out, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            o_ok = offs_o < n_out
            col = tl.load(idx_ptr + offs_o, mask=o_ok, other=0).to(tl.int64)
            xo = tl.load(x_ptr + col * stride_xk, mask=o_ok, other=0.0).to(tl.float32)
            wo = tl.load(wo_ptr + rn.to(tl.int64)[:, None] * stride_won + offs_o[None, :] * stride_wok,
                         mask=o_ok[None, :], other=0.0).to(tl.float32)
            out += tl.sum(wo * xo[None, :], axis=1)
    if HAS_BIAS:
        out += tl.load(b_ptr + rn).to(tl.float32)
    tl.store(y_ptr + offs_n, out.to(y_ptr.dtype.element_ty), mask=n_ok)


_HEURISTICS = {
    "ONE_GROUP": lambda a: a["G"] <= 1,
    "EVEN_KB": lambda a: a["KB"] % a["BLOCK_KB"] == 0,
    "SPLIT": lambda a: a["SPLIT_K"] > 1,
    "GB": lambda a: a["BLOCK_KB"] if a["G"] <= 1 else a["GROUP"] // a["PACK"],
}
_KEY = ["N", "K", "GROUP", "FMT", "PACK", "HAS_ZEROS", "DQ", "FLIP", "HAS_OUTLIERS"]
_LAUNCH = TunedLauncher(triton.autotune(configs=_row_configs(), key=_KEY,
                                        prune_configs_by={"early_config_prune": _prune})(
    triton.heuristics(values=_HEURISTICS)(_weight_only_gemv_row_kernel)), "weight_only_gemv_row")


def _workspace(device: torch.device, parts: int, locks: int) -> tuple[Tensor, Tensor]:
    """Per-call split-K partials (uninitialised; freed when the op returns) and tile counters from
    the persistent self-resetting ring (:mod:`._split_k_counters`): no zero-fill launch."""
    return torch.empty(max(parts, 1), dtype=torch.float32, device=device), split_k_counters(device, locks)


def _explicit(w: WeightOperand, kb: int, config: dict) -> tuple[dict, dict]:
    """(constexprs with the heuristics filled in, launch options) of an explicit config."""
    cfg = dict(config)
    launch = dict(num_warps=cfg.pop("num_warps", 4), num_stages=cfg.pop("num_stages", 1))
    cfg.setdefault("ASM", False)
    if not row_tile_ok(w.group, w.groups, w.pack, cfg["BLOCK_KB"]):
        raise ValueError(f"weight_only_gemv_row: BLOCK_KB={cfg['BLOCK_KB']} does not hold whole groups "
                         f"of {w.group}")
    named = {"G": w.groups, "KB": kb, "GROUP": w.group, "PACK": w.pack, **cfg}
    cfg.update({name: fn(named) for name, fn in _HEURISTICS.items()})
    return cfg, launch


_TABLED: dict[tuple, Optional[tuple[dict, dict]]] = {}


def _tabled(w: WeightOperand, kb: int) -> Optional[tuple[dict, dict]]:
    """The measured config of this layer shape (``weight_only_gemv_configs``), resolved once."""
    key = w.key()
    if key not in _TABLED:
        cfg = row_table_config(weight_kind(w.fmt, w.pack, w.group, w.groups, w.signed), w.n, w.k)
        ok = cfg is not None and row_tile_ok(w.group, w.groups, w.pack, cfg["BLOCK_KB"])
        _TABLED[key] = _explicit(w, kb, cfg) if ok else None
    return _TABLED[key]


def weight_only_gemv_row(x: Tensor, w: WeightOperand, bias: Optional[Tensor],
                         outlier_idx: Optional[Tensor] = None, w_outliers: Optional[Tensor] = None, *,
                         config: Optional[dict] = None) -> Tensor:
    """``x [..., K]`` (float16/bfloat16, exactly one row) times the weight-only ``w``, plus
    ``x[..., outlier_idx] @ w_outliers.T`` when given (int8-outlier's fp16 columns, ``[N, n]``).
    ``config`` (``BLOCK_N``, ``BLOCK_KB``, ``SPLIT_K``, ``ASM``, ``num_warps``; ``HALF2=False`` keeps 4-bit
    codes on the float32 form) skips the autotuner, as
    the measured config of a known layer shape does (``weight_only_gemv_configs``)."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"weight_only_gemv_row: x must be float16/bfloat16, got {x.dtype}")
    k, n = x.shape[-1], w.n
    if k != w.k:
        raise ValueError(f"weight_only_gemv_row: x has K={k}, the weight K={w.k}")
    rows = x.numel() // k if k else x.shape[:-1].numel()
    if rows != 1:
        raise ValueError(f"weight_only_gemv_row takes one row, got {rows}")
    lead = x.shape[:-1]
    x1 = x.reshape(k)
    y = torch.empty(n, dtype=x.dtype, device=x.device)
    if n == 0 or k == 0:
        y.zero_()
        return (y + bias.to(y.dtype) if bias is not None and n else y).reshape(*lead, n)
    n_out = outlier_idx.numel() if (outlier_idx is not None and w_outliers is not None) else 0
    if n_out and (w_outliers.shape[0] != n or w_outliers.shape[1] != n_out):
        raise ValueError(f"weight_only_gemv_row: w_outliers must be [{n}, {n_out}], got {tuple(w_outliers.shape)}")
    kb = w.qweight.shape[1]
    # An explicit config, else the measured one for this layer shape, else the autotuner.
    chosen = _explicit(w, kb, config) if config is not None else _tabled(w, kb)
    cands = [chosen[0]] if chosen is not None else [c.kwargs for c in _LAUNCH.autotuner.configs]
    splits = max(c["SPLIT_K"] for c in cands)
    # One counter per N tile of the narrowest tile that splits K.
    bn = min([c["BLOCK_N"] for c in cands if c["SPLIT_K"] > 1] or [16])
    part, lock = _workspace(x.device, splits * n, triton.cdiv(n, bn)) if splits > 1 else (y, y)
    cb = w.codebook if w.codebook is not None else y
    args = (x1, w.qweight, w.scales, w.zeros if w.zeros is not None else y, cb,
            w.dq_scale if w.dq_scale is not None else y, w.dq_offset if w.dq_offset is not None else y,
            outlier_idx if n_out else y, w_outliers if n_out else y, bias if bias is not None else y, y, part, lock,
            n, k, kb, w.groups, w.group, n_out, x1.stride(0),
            w_outliers.stride(0) if n_out else 0, w_outliers.stride(1) if n_out else 0)
    meta = dict(FMT=w.fmt, PACK=w.pack, ZERO=w.zero, HAS_ZEROS=w.zeros is not None, DQ=w.dq_scale is not None,
                DQ_BLOCK=w.dq_block, FLIP=w.signed, S_DIV=w.scale_div, HAS_BIAS=bias is not None,
                HAS_OUTLIERS=n_out > 0, BLOCK_O=16, HALF2=_half2_ok(x1, w))
    grid = lambda c: (triton.cdiv(n, c["BLOCK_N"]), c["SPLIT_K"])  # noqa: E731
    if chosen is not None:
        cfg, launch = chosen
        if "HALF2" in cfg:  # an explicit config may keep 4-bit codes on the float32 form (A/B, tests)
            meta["HALF2"] = meta["HALF2"] and bool(cfg["HALF2"])
            cfg = {a: b for a, b in cfg.items() if a != "HALF2"}
        _weight_only_gemv_row_kernel[grid(cfg)](*args, **meta, **cfg, **launch)
    else:
        _LAUNCH((x.dtype, bias is not None, n_out > 0, *w.key()), grid, *args, **meta)
    return y.reshape(*lead, n)


# QCOMPILER_TRITON_HALF2=0 keeps 4-bit codes on the float32 form (the A/B of benchmarks/sweep_gemv.py).
_HALF2_ON = os.environ.get("QCOMPILER_TRITON_HALF2", "1") != "0"


def _half2_ok(x1: Tensor, w: WeightOperand) -> bool:
    """Whether the paired-float16 K loop (``half2_tiles``; used with ``ASM`` configs) holds this call:
    4-bit UINT codes, a contiguous 16-byte aligned float16 x, K and the groups multiples of 8 codes, a
    4-byte aligned W (and, in the kernel, whole K tiles)."""
    return (_HALF2_ON and w.fmt == 0 and w.pack == 2 and x1.dtype == torch.float16 and w.k % 8 == 0
            and (w.groups <= 1 or w.group % 8 == 0) and x1.stride(0) == 1 and x1.data_ptr() % 16 == 0
            and w.qweight.data_ptr() % 4 == 0 and w.qweight.shape[1] * 2 == w.k)


def row_supported(w: WeightOperand) -> bool:
    """Whether some config of this kernel holds ``w``'s groups whole (else use weight_only_gemv)."""
    return any(row_tile_ok(w.group, w.groups, w.pack, c.kwargs["BLOCK_KB"]) for c in _LAUNCH.autotuner.configs)
