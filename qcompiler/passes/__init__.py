"""The built-in passes. Importing this package registers them with the pass manager."""

from qcompiler.passes.annotate_linears import AnnotateLinears
from qcompiler.passes.annotate_weight_format import AnnotateWeightFormat
from qcompiler.passes.calibrate import ActivationStats, Calibrate
from qcompiler.passes.canonicalize_linear import CanonicalizeLinear
from qcompiler.passes.dce import DeadCodeElimination
from qcompiler.passes.decompose_matmul import DecomposeMatmul
from qcompiler.passes.detect_outliers import DetectOutliers, OutlierAnalysis
from qcompiler.passes.lower_triton import LowerTriton  # triton itself is imported lazily
from qcompiler.passes.quantize_weights import QuantizeWeights
from qcompiler.passes.scale_folding import ScaleFoldAnalysis
from qcompiler.passes.share_activation_quant import ShareActivationQuant
from qcompiler.passes.smooth import Smooth
from qcompiler.passes.smooth_shared import SmoothShared

__all__ = [
    "CanonicalizeLinear",
    "AnnotateLinears",
    "AnnotateWeightFormat",
    "Calibrate",
    "ActivationStats",
    "DetectOutliers",
    "LowerTriton",
    "OutlierAnalysis",
    "QuantizeWeights",
    "DecomposeMatmul",
    "ShareActivationQuant",
    "Smooth",
    "SmoothShared",
    "ScaleFoldAnalysis",
    "DeadCodeElimination",
]
