"""``w8a8-smoothquant``: SmoothQuant's per-channel smoothing, then vector-wise int8 (W8A8).

    canonicalize-linear,annotate-linears{act=row,weight=channel},calibrate,
    smooth-shared{alpha=0.5},smooth{alpha=0.5,fold=true,unfoldable=mul},
    quantize-weights,decompose-matmul,share-activation-quant,dce

Needs calibration data (the smoothing factors come from the calibrated max |x| per channel).

``smooth`` picks which linears are smoothed:

``"all"`` (default)
    every linear; where nothing absorbs ``1/s`` an explicit ``x * (1/s)`` stays in the graph
    (qcompiler's own format only). Shared inputs still fold: q/k/v share one scale folded into
    ``input_layernorm``, gate/up into ``post_attention_layernorm``, ``down_proj`` into
    ``up_proj``'s rows.
``"foldable"``
    only the linears whose ``1/s`` folds; the others (``o_proj``, ``lm_head`` on a Hugging Face
    Llama) stay un-smoothed, as llm-compressor leaves them, so the model exports to
    compressed-tensors and runs no extra multiply.

Why ``"all"`` is the default (docs/formats.md has the table): on the tiny random Llama both give
the same logits error vs float64 (0.0152, 3 seeds); on the post-LN MiniLM nothing folds (every
LayerNorm output also feeds a residual), so ``"foldable"`` smooths nothing and its embedding cosine
falls from 0.99901 to int8-vectorwise's 0.99735. Pass ``smooth="foldable"`` to export.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.errors import ConfigError
from qcompiler.pass_manager import Pass
from qcompiler.passes.smooth import Smooth
from qcompiler.passes.smooth_shared import SmoothShared
from qcompiler.schemes.scheme import Scheme
from qcompiler.schemes.stages import calibration, head, tail

__all__ = ["SmoothQuantConfig", "SCHEMES"]


@dataclass(frozen=True)
class SmoothQuantConfig:
    alpha: float = 0.5   # migration strength: 0 keeps x as is, 1 moves all of max|x| into W
    fold: bool = True    # fold 1/s into the preceding norm/linear where the graph allows (False: explicit muls)
    smooth: str = "all"  # "all": explicit x * (1/s) where nothing folds; "foldable": smooth only where 1/s folds

    def __post_init__(self):
        Smooth(alpha=self.alpha, fold=self.fold)  # the pass validates its own options
        if not isinstance(self.fold, bool):
            raise ConfigError(f"scheme 'w8a8-smoothquant': fold must be True or False, got {self.fold!r}")
        if self.smooth not in _SMOOTH:
            raise ConfigError(f"scheme 'w8a8-smoothquant': smooth must be one of {', '.join(_SMOOTH)}, "
                              f"got {self.smooth!r}", hint="'foldable' exports to compressed-tensors")


_SMOOTH = {"foldable": "skip", "all": "mul"}  # smooth= -> what the smooth pass does where 1/s cannot fold


def _smoothquant(cfg: SmoothQuantConfig, calibrated: bool) -> list[Pass]:
    shared = [SmoothShared(alpha=float(cfg.alpha))] if cfg.fold else []
    return [*head("row", "channel"), *calibration(calibrated), *shared,
            Smooth(alpha=float(cfg.alpha), fold=cfg.fold, unfoldable=_SMOOTH[cfg.smooth] if cfg.fold else "mul"), *tail()]


SCHEMES = [
    Scheme("w8a8-smoothquant", SmoothQuantConfig, _smoothquant,
           "SmoothQuant: activation outliers migrated into the weights, then vector-wise int8",
           needs_calibration=True,
           calibration_hint="its smoothing factors come from the calibrated max |x| of every input channel"),
]
