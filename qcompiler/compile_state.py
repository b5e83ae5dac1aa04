"""What passes record during one compile for later passes, the report and the saved record:
typed fields on ``ctx.state`` instead of string keys in a dict."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["CompileState"]


@dataclass
class CompileState:
    # layer -> calibration rows kept for the report's per-layer error (calibrate, smooth, gptq, awq)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)
    # layer -> [K] per-feature max |x| over all calibration rows (calibrate; kept on qm.record)
    absmax: dict[str, torch.Tensor] = field(default_factory=dict)
    # layer -> its float weight, kept only until compile ends (quantize-weights, gptq; for the report)
    float_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    # layer -> [rows, K] float input seen on the export's example (ONNX lowering passes)
    layer_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    # (event, region path) in the order sequential calibration did them: load, process, offload
    sequential_trace: list[tuple[str, str]] = field(default_factory=list)
