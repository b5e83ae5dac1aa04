"""Autotune config lists of the split-K weight-only kernel (:mod:`.weight_only_gemv`), one per form:
CUDA cores at M = 1 (``fma``), tensor cores for 2 <= M <= 16 (``dot``), tiled over M (``gemm``);
and the measured configs of the decode layer shapes (Llama-3-8B, TinyLlama-1.1B, their fused
q/k/v and gate/up) for the one-row kernel and the tensor-core form at 16 rows: those shapes skip
the autotuner, whose single-launch timings (a few us, launch gaps included) picked configs up to
1.6x slower than the best one under CUDA-graph replay with cold weights."""

from __future__ import annotations

import triton

from qcompiler.backends.triton._config import interpreting, make_config, pick_configs
from qcompiler.backends.triton._magic_dequant import asm_available

__all__ = ["fma_configs", "dot_configs", "gemm_configs", "weight_kind", "row_table_config", "dot16_table_config"]


def _cfg(ASM: int = 0, **kw) -> triton.Config:
    # ASM (tensor-core form, UINT codes, fp16 x): 0 codes via float32, 1 fp16 magic, 2 fp16 magic via prmt.
    return make_config(ASM=ASM, **kw)


def fma_configs() -> list[triton.Config]:
    # M = 1. Enough bytes in flight per SM: 32-64 B of W per thread per tile (plus the next tile,
    # prefetched), and N / BLOCK_N * SPLIT_K >= 2 programs per SM for N >= 4096. BLOCK_K 64 / 128
    # divide the usual group sizes (NF4 64, int4 128). No spills on sm_90 with triton 3.6 (ptxas:
    # 56-176 registers); wider tiles (BLOCK_K 256+, 128x128 with 4 warps) spilled.
    c = _cfg
    gpu = [c(BLOCK_N=64, BLOCK_K=128, SPLIT_K=8, num_warps=4, num_stages=1),
           c(BLOCK_N=32, BLOCK_K=128, SPLIT_K=8, num_warps=4, num_stages=1),
           c(BLOCK_N=128, BLOCK_K=128, SPLIT_K=8, num_warps=8, num_stages=1),
           c(BLOCK_N=128, BLOCK_K=128, SPLIT_K=4, num_warps=8, num_stages=1),
           c(BLOCK_N=16, BLOCK_K=128, SPLIT_K=4, num_warps=2, num_stages=1),
           c(BLOCK_N=64, BLOCK_K=128, SPLIT_K=16, num_warps=4, num_stages=1),
           c(BLOCK_N=32, BLOCK_K=128, SPLIT_K=16, num_warps=2, num_stages=1),
           c(BLOCK_N=64, BLOCK_K=64, SPLIT_K=16, num_warps=4, num_stages=1),
           c(BLOCK_N=128, BLOCK_K=64, SPLIT_K=16, num_warps=4, num_stages=1),
           c(BLOCK_N=32, BLOCK_K=64, SPLIT_K=16, num_warps=2, num_stages=1)]
    return pick_configs(gpu, c(BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, num_warps=4))


def dot_configs() -> list[triton.Config]:
    # 2 <= M <= 16: tl.dot needs BLOCK_N >= 16; wider tiles re-read x less often. Triton
    # software-pipelines the W loads (num_stages) since they feed the dot.
    # ASM=2 (fp16 magic numbers via prmt for UINT codes with fp16 x: 5-30% faster than ASM=0 at
    # M = 4 / 16 on the H200, benchmarks/sweep_gemv.py, 2026-12-02; NF4 levels from the register
    # table of _nf4_register_table, fp16 or bf16 x).
    a = 2 if asm_available() else 0
    c = lambda **kw: _cfg(**{"ASM": a, **kw})  # noqa: E731
    gpu = [c(BLOCK_N=64, BLOCK_K=128, SPLIT_K=8, num_warps=4, num_stages=3),
           c(BLOCK_N=32, BLOCK_K=128, SPLIT_K=8, num_warps=4, num_stages=3),
           c(BLOCK_N=128, BLOCK_K=128, SPLIT_K=8, num_warps=4, num_stages=3),
           c(BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, num_warps=4, num_stages=4),
           c(BLOCK_N=16, BLOCK_K=128, SPLIT_K=4, num_warps=4, num_stages=4),
           c(BLOCK_N=64, BLOCK_K=64, SPLIT_K=16, num_warps=4, num_stages=3),
           c(BLOCK_N=128, BLOCK_K=64, SPLIT_K=16, num_warps=4, num_stages=3),
           c(BLOCK_N=32, BLOCK_K=64, SPLIT_K=8, num_warps=4, num_stages=4),
           c(BLOCK_N=128, BLOCK_K=128, SPLIT_K=4, num_warps=8, num_stages=3),
           c(BLOCK_N=64, BLOCK_K=128, SPLIT_K=16, num_warps=4, num_stages=3)]
    return pick_configs(gpu, c(BLOCK_N=16, BLOCK_K=64, SPLIT_K=2, ASM=1, num_warps=4))


def gemm_configs() -> list[triton.Config]:
    # 16 < M <= GEMM_MAX_M: the same kernel tiled over M as well (a mixed-input GEMM: W unpacked in
    # registers, fed to the tensor cores); still W-bound for small M, so split-K stays available.
    c = _cfg
    # 8 warps for the wider tiles: unpacking a [BLOCK_K, BLOCK_N] tile in registers next to the
    # accumulator spilled with 4 (ptxas, sm_90, triton 3.6).
    gpu = [c(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=4, num_stages=3),
           c(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, SPLIT_K=1, num_warps=8, num_stages=3),
           c(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=3),
           c(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=4),
           c(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, SPLIT_K=4, num_warps=4, num_stages=4),
           c(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=3),
           c(BLOCK_M=64, BLOCK_N=256, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=3),
           c(BLOCK_M=32, BLOCK_N=128, BLOCK_K=64, SPLIT_K=2, num_warps=4, num_stages=4)]
    return pick_configs(gpu, c(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, num_warps=4))


# Best config per (weight kind, N, K) from benchmarks/sweep_gemv.py --production on an H200
# (2026-12-02 20:01 UTC, GPU time per call under CUDA-graph replay, weights cold in L2).
# Kinds: "w8" per-channel UINT8, "w4" UINT4 g128, "nf4" b64, "i8o" int8-outlier's signed int8.
# w4 at 8B q/o and q/k/v fused: re-measured for the paired-float16 K loop (2026-12-03 06:02 UTC, same
# card and script, --formats w4; its other w4 entries were still the best or within 1%, or not re-run).
# Row kernel: (BLOCK_N, BLOCK_KB, SPLIT_K, num_warps); narrow tiles without a split win on
# every small layer, split-K only where N is small and K long (down, k/v at 4-bit, NF4).
_ROW_SHAPES = {  # (N, K): w8, w4, nf4, i8o
    (2048, 2048): [(2, 2048, 1, 4), (8, 512, 1, 4), (32, 256, 4, 4), (4, 1024, 1, 4)],      # 1.1B q/o
    (256, 2048): [(2, 2048, 1, 4), (8, 512, 1, 4), (32, 256, 4, 4), (2, 2048, 1, 4)],       # 1.1B k/v
    (5632, 2048): [(8, 512, 1, 4), (16, 512, 1, 4), (32, 256, 2, 4), (8, 512, 1, 4)],      # 1.1B gate/up
    (2048, 5632): [(4, 1024, 1, 4), (32, 256, 8, 4), (32, 256, 8, 4), (4, 1024, 1, 4)],    # 1.1B down
    (2560, 2048): [(4, 1024, 1, 4), (8, 512, 1, 4), (32, 256, 4, 4), (4, 1024, 1, 4)],     # 1.1B q/k/v fused
    (11264, 2048): [(16, 256, 1, 4), (16, 512, 1, 4), (32, 256, 1, 4), (16, 256, 1, 4)],   # 1.1B gate+up fused
    (4096, 4096): [(4, 1024, 1, 4), (8, 512, 1, 4), (32, 256, 4, 4), (8, 512, 1, 4)],      # 8B q/o
    (1024, 4096): [(2, 2048, 1, 4), (32, 256, 8, 4), (32, 256, 8, 4), (2, 2048, 1, 4)],    # 8B k/v
    (14336, 4096): [(16, 256, 1, 4), (64, 128, 4, 4), (32, 256, 2, 4), (16, 256, 1, 4)],   # 8B gate/up
    (4096, 14336): [(4, 1024, 1, 4), (32, 256, 8, 4), (32, 256, 4, 4), (32, 256, 4, 4)],   # 8B down
    (6144, 4096): [(8, 512, 1, 4), (8, 512, 1, 4), (32, 256, 2, 4), (8, 512, 1, 4)],       # 8B q/k/v fused
    (28672, 4096): [(16, 256, 1, 4), (16, 512, 1, 4), (32, 256, 1, 4), (16, 256, 1, 4)],   # 8B gate+up fused
}
# Tensor-core form at 16 rows (M_BUCKET 16), 1.1B shapes: (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages).
_DOT16_SHAPES = {
    (2048, 2048): [(32, 128, 8, 4, 3), (32, 128, 8, 4, 3), (32, 64, 8, 4, 4), (32, 128, 8, 4, 3)],
    (256, 2048): [(32, 128, 8, 4, 3), (32, 128, 8, 4, 3), (32, 64, 8, 4, 4), (32, 128, 8, 4, 3)],
    (5632, 2048): [(64, 128, 4, 4, 4), (64, 128, 4, 4, 4), (32, 64, 8, 4, 4), (64, 128, 4, 4, 4)],
    (2048, 5632): [(32, 128, 8, 4, 3), (64, 128, 8, 4, 3), (128, 64, 16, 4, 3), (32, 128, 8, 4, 3)],
    (2560, 2048): [(32, 128, 8, 4, 3), (32, 128, 8, 4, 3), (32, 64, 8, 4, 4), (32, 128, 8, 4, 3)],
    (11264, 2048): [(128, 128, 4, 8, 3), (64, 128, 4, 4, 4), (32, 64, 8, 4, 4), None],
}
_KINDS = ["w8", "w4", "nf4", "i8o"]


def weight_kind(fmt: int, pack: int, group: int, groups: int, signed: bool) -> str | None:
    """The table's name for a weight layout, or None for layouts the tables were not measured on."""
    if signed:
        return "i8o" if groups <= 1 else None
    if fmt == 1:
        return "nf4" if group == 64 else None
    if pack == 1:
        return "w8" if groups <= 1 else None
    return "w4" if group == 128 else None


def row_table_config(kind: str | None, n: int, k: int) -> dict | None:
    """The measured one-row config for this layer (``config=`` of ``weight_only_gemv_row``), or None."""
    row = _ROW_SHAPES.get((n, k))
    if kind is None or row is None or interpreting():
        return None
    bn, kb, split, warps = row[_KINDS.index(kind)]
    return dict(BLOCK_N=bn, BLOCK_KB=kb, SPLIT_K=split, ASM=asm_available(), num_warps=warps, num_stages=1)


def dot16_table_config(kind: str | None, n: int, k: int) -> dict | None:
    """The measured tensor-core config at 16 rows for this layer, or None."""
    row = _DOT16_SHAPES.get((n, k))
    entry = row[_KINDS.index(kind)] if (kind is not None and row is not None) else None
    if entry is None or interpreting():
        return None
    bn, bk, split, warps, stages = entry
    return dict(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, ASM=2 if asm_available() else 0, num_warps=warps,
                num_stages=stages)
