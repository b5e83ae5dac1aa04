"""Where the int8 linears quantize their activations: a separate kernel or inside the GEMM.

* ``SEPARATE``: :mod:`.quantize_rowwise` writes int8 X (+ row scales, + the outlier columns),
  then :mod:`.int8_linear` reads it: X makes a round trip through memory as int8;
* ``FUSED``: :mod:`.row_absmax` writes only the M row scales, then :mod:`.int8_linear_fused_quant`
  quantizes X's tiles in registers before the int8 ``tl.dot``;
* ``AUTO``: :func:`fuses_act_quant` picks by shape (the default): today always ``SEPARATE``.

Both give the same output bit for bit; the choice is speed only. ``lower-triton{act_quant=...}``
fixes it per compiled model (the op's last argument), so a benchmark can compare the two.

Measured (NVIDIA H200, triton 3.6, ``benchmarks/bench_int8_prefill.py``, 2026-12-02): on all
four Llama-3-8B linear shapes at M = 512 and 2048 the fused GEMM is 1.4-2.6x slower than the
separate pair (e.g. 4096x4096, M = 2048: 142.7 vs 81.8 µs), although its prologue is only 1-10%
of its time: quantizing each X tile once per column block (N / BLOCK_N times) costs more ALU time
than the int8 tensor cores spend on the tile. So ``AUTO`` fuses nowhere (``FUSED_MIN_M = None``).
"""

from __future__ import annotations

import enum

from qcompiler.errors import ConfigError

__all__ = ["ActQuant", "fuses_act_quant", "parse_act_quant", "FUSED_MIN_M"]


class ActQuant(enum.IntEnum):
    """The ``act_quant`` argument of ``qcompiler_triton.int8_outlier_linear`` and friends."""

    AUTO = 0
    SEPARATE = 1
    FUSED = 2


# AUTO fuses from this many rows on (M <= 16 takes the weight-only kernel before this is asked);
# None: never, since the fused GEMM was slower at every shape measured (see above).
FUSED_MIN_M: int | None = None


def fuses_act_quant(mode: int, m: int, n: int, k: int) -> bool:
    """Whether an int8 linear of ``m`` rows, ``n`` outputs, ``k`` inputs quantizes X in the GEMM."""
    if mode == ActQuant.FUSED:
        return True
    if mode == ActQuant.SEPARATE:
        return False
    if mode != ActQuant.AUTO:
        raise ConfigError(f"act_quant must be 0 (auto), 1 (separate) or 2 (fused), got {mode!r}")
    return FUSED_MIN_M is not None and m >= FUSED_MIN_M


def parse_act_quant(name: str) -> ActQuant:
    """``"auto" | "separate" | "fused"`` (the ``lower-triton`` option) -> :class:`ActQuant`."""
    try:
        return ActQuant[str(name).upper()]
    except KeyError:
        raise ConfigError(f"lower-triton: act_quant={name!r} is not one of auto, separate, fused",
                          hint="auto picks by shape; separate = quantize kernel + int8 GEMM; "
                               "fused = activation quantization inside the int8 GEMM") from None
