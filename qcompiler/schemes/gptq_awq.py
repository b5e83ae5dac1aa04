"""Calibrated weight-only schemes: GPTQ and AWQ. Same storage and ops as ``w4-weight-only``.

==========  ====================================================================================
``gptq-w4``  GPTQ (Frantar et al.): int4, group 128, symmetric; columns quantized one by one
             with the rounding error pushed onto the rest through the inverse Hessian
``gptq-w8``  the same with int8 codes, one scale per output channel
``awq-w4``   AWQ (Lin et al.): per-input-channel scales searched on calibration data and folded
             into the previous op, range clipping, then int4 round-to-nearest, group 128,
             with zero points. ``smooth="foldable"`` (default) searches scales only where 1/s
             folds (q/k/v: one search, into ``input_layernorm``; gate/up; down into up's rows),
             as llm-compressor does, so the model exports to compressed-tensors; ``"all"``
             also scales o_proj / lm_head behind an explicit ``x * (1/s)``
==========  ====================================================================================

Each expands to::

    canonicalize-linear,annotate-linears{act=none},annotate-weight-format{format=uint,...},
    gptq{...} | awq{...},quantize-weights,decompose-matmul,share-activation-quant,dce

Both need calibration data and run region by region in execution order (``device=`` moves one
region at a time to that device; the rest of the model stays where it is).
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.errors import ConfigError
from qcompiler.pass_manager import Pass
from qcompiler.passes.annotate_weight_format import AnnotateWeightFormat, check_weight_format
from qcompiler.passes.awq import AWQ
from qcompiler.passes.gptq import GPTQ
from qcompiler.schemes.scheme import Scheme
from qcompiler.schemes.stages import head, tail
from qcompiler.spec import WeightFormat

__all__ = ["GPTQConfig", "GPTQW8Config", "AWQConfig", "SCHEMES"]


def _check_device(device, where: str) -> None:
    if device is not None and not isinstance(device, str):
        raise ConfigError(f"{where}: device must be a string such as 'cuda' or None, got {device!r}")


@dataclass(frozen=True)
class GPTQConfig:
    group_size: int = 128      # input dims sharing one scale; 0: one per output channel
    symmetric: bool = True     # False: a uint8 zero point per group
    act_order: bool = False    # quantize columns by decreasing Hessian diagonal
    percdamp: float = 0.01     # dampening, as a fraction of mean(diag H)
    block_size: int = 128      # columns per lazy batch update
    device: str | None = None  # quantize one region at a time on this device (None: where it is)

    bits = 4

    def __post_init__(self):
        check_weight_format(WeightFormat.UINT, self.bits, self.group_size, False, f"scheme 'gptq-w{self.bits}'")
        _check_device(self.device, f"scheme 'gptq-w{self.bits}'")


@dataclass(frozen=True)
class GPTQW8Config(GPTQConfig):
    group_size: int = 0

    bits = 8


@dataclass(frozen=True)
class AWQConfig:
    group_size: int = 128      # input dims sharing one scale; 0: one per output channel
    symmetric: bool = False    # AWQ's default grid has zero points
    n_grid: int = 20           # alpha in {0, 1/n_grid, ..., (n_grid-1)/n_grid}
    clip: bool = True          # search a range-shrinking ratio per (row, group)
    fold: bool = True          # fold 1/s into the previous op where the graph allows (False: explicit muls everywhere)
    smooth: str = "foldable"   # "foldable": search scales only where 1/s folds; "all": explicit x * (1/s) elsewhere
    max_rows: int = 1024       # calibration rows per layer used by the search
    device: str | None = None

    def __post_init__(self):
        check_weight_format(WeightFormat.UINT, 4, self.group_size, False, "scheme 'awq-w4'")
        _check_device(self.device, "scheme 'awq-w4'")
        if isinstance(self.n_grid, bool) or not isinstance(self.n_grid, int) or self.n_grid < 1:
            raise ConfigError(f"scheme 'awq-w4': n_grid must be an int >= 1, got {self.n_grid!r}")
        if self.smooth not in _SMOOTH:
            raise ConfigError(f"scheme 'awq-w4': smooth must be one of {', '.join(_SMOOTH)}, got {self.smooth!r}",
                              hint="'foldable' exports to compressed-tensors")


_SMOOTH = {"foldable": "skip", "all": "mul"}  # smooth= -> what the awq pass does where 1/s cannot fold


def _head(bits: int, group_size: int, symmetric: bool) -> list[Pass]:
    return [*head("none"), AnnotateWeightFormat(format=WeightFormat.UINT, bits=bits, group_size=group_size,
                                                symmetric=symmetric, double_quant=False)]


def _gptq(cfg: GPTQConfig, calibrated: bool) -> list[Pass]:
    return [*_head(cfg.bits, cfg.group_size, cfg.symmetric),
            GPTQ(percdamp=cfg.percdamp, block_size=cfg.block_size, act_order=cfg.act_order, device=cfg.device),
            *tail()]


def _awq(cfg: AWQConfig, calibrated: bool) -> list[Pass]:
    return [*_head(4, cfg.group_size, cfg.symmetric),
            AWQ(n_grid=cfg.n_grid, clip=cfg.clip, fold=cfg.fold, unfoldable=_SMOOTH[cfg.smooth] if cfg.fold else "mul", max_rows=cfg.max_rows,
                device=cfg.device), *tail()]


SCHEMES = [
    Scheme("gptq-w4", GPTQConfig, _gptq,
           "GPTQ int4 weights (group-wise, error compensation via the inverse Hessian), float activations",
           needs_calibration=True),
    Scheme("gptq-w8", GPTQW8Config, _gptq,
           "GPTQ int8 weights (per output channel), float activations", needs_calibration=True),
    Scheme("awq-w4", AWQConfig, _awq,
           "AWQ int4 weights: activation-aware channel scales folded into the previous op, clipping, "
           "group-wise round-to-nearest; float activations", needs_calibration=True),
]
