"""The pieces every scheme's pipeline shares: the head that finds and annotates the linears,
the optional calibration, and one tail that materializes and cleans up."""

from __future__ import annotations

from qcompiler.pass_manager import Pass
from qcompiler.passes.annotate_linears import AnnotateLinears
from qcompiler.passes.calibrate import Calibrate
from qcompiler.passes.canonicalize_linear import CanonicalizeLinear
from qcompiler.passes.dce import DeadCodeElimination
from qcompiler.passes.decompose_matmul import DecomposeMatmul
from qcompiler.passes.quantize_weights import QuantizeWeights
from qcompiler.passes.share_activation_quant import ShareActivationQuant
from qcompiler.spec import ActGranularity, WeightGranularity

__all__ = ["head", "calibration", "tail"]


def head(act: ActGranularity | str, weight: WeightGranularity | str = WeightGranularity.CHANNEL) -> list[Pass]:
    """Linears in one canonical form, each annotated with how its X and W are quantized."""
    return [CanonicalizeLinear(), AnnotateLinears(act=ActGranularity(act), weight=WeightGranularity(weight))]


def calibration(calibrated: bool) -> list[Pass]:
    """``calibrate`` when there is data (for schemes that do not need it: the report's per-layer error)."""
    return [Calibrate()] if calibrated else []


def tail() -> list[Pass]:
    """Weights to their stored form, matmuls to qcompiler ops, shared activation quantization, dce.
    (share-activation-quant finds nothing to share in weight-only graphs.)"""
    return [QuantizeWeights(), DecomposeMatmul(), ShareActivationQuant(), DeadCodeElimination()]
