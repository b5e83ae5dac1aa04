"""Autotune config lists of the split-K weight-only kernel (:mod:`.weight_only_gemv`), one per form:
CUDA cores at M = 1 (``fma``), tensor cores for 2 <= M <= 16 (``dot``), tiled over M (``gemm``)."""

from __future__ import annotations

import triton

from qcompiler.backends.triton._config import make_config, pick_configs
from qcompiler.backends.triton._magic_dequant import asm_available

__all__ = ["fma_configs", "dot_configs", "gemm_configs"]


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
