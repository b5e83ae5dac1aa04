"""``qcompiler.save(qm, dir, format="compressed-tensors")``: a compiled Hugging Face model as a
compressed-tensors checkpoint that transformers, vLLM and llm-compressor load.

The ``compressed-tensors`` library writes the format: each quantized layer gets a
``QuantizationScheme`` (``apply_quantization_config``), its ``weight_scale`` / ``weight_zero_point``
are set to qcompiler's, its ``weight`` to the exact dequantization of qcompiler's codes, and
``ModelCompressor.compress_model`` re-derives the codes (``round(W / s) + zp`` gives back the same
integers) and packs them. What maps to what:

=====================================  ======================================================
qcompiler layer                        compressed-tensors scheme (format)
=====================================  ======================================================
weight-only uint, 4 or 8 bits          int weights, ``group`` (or ``channel``), symmetric or
(w4/w8-weight-only, gptq-*, awq-w4)    not, no activations (``pack-quantized``)
int8 row x channel, no outliers        int8 ``channel`` symmetric weights, dynamic per-token
(w8a8-smoothquant, int8-vectorwise)    int8 activations (``int-quantized``)
=====================================  ======================================================

Refused, with the layer named: fp16 outlier columns (int8-outlier: LLM.int8() has no peer
format; keep it in qcompiler's own format), NF4, a smoothing / AWQ scale that stayed an explicit
``x * (1/s)`` (compressed-tensors has no per-input-channel activation scale) or was folded into a
norm inside a region, an act-order permutation, per-tensor activation scales. Scales folded into
a norm outside the regions (``smoothing="outer-norm"``: the norm's weight in the model is already
``w / s``) or into a previous linear's rows (``"linear"``: that linear's codes hold it) are written.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from qcompiler.formats.errors import ExportFormatError
from qcompiler.graph.nodes import get_attr_value
from qcompiler.quant import effective_group_size
from qcompiler.spec import ActGranularity, OutlierMode, WeightFormat, WeightGranularity, get_spec

__all__ = ["save_compressed_tensors", "compressed_model", "compressed_config"]


@dataclass
class _Layer:
    name: str
    kind: str                       # "uint" | "w8a8"
    bits: int
    group_size: int                 # 0: per channel
    symmetric: bool
    weight: torch.Tensor            # float32 [N, K], the exact dequantization
    scale: torch.Tensor             # [N, G] (w8a8: [N, 1]) as compressed-tensors stores it
    zero_point: torch.Tensor | None  # int8 [N, G], signed


def _layers(qm) -> dict[str, _Layer]:
    from qcompiler.formats.layer_weights import UIntWeights
    from qcompiler.quant.packing import unpack_int4

    out = {}
    for region in qm.program.regions:
        gm = region.gm
        for node in gm.graph.nodes:
            spec = get_spec(node)
            if spec is None or node.op != "call_function" or spec.weights is None:
                continue
            where = f"layer '{spec.layer}' ({spec.op_name})"
            if spec.smoothing == "mul":
                raise ExportFormatError(
                    f"{where}: its smoothing / AWQ scale is an explicit x * (1/s) in the graph (not folded into a "
                    f"float weight the checkpoint keeps); compressed-tensors has no per-input-channel scale",
                    hint="compile with smooth='foldable' (w8a8-smoothquant, awq-w4: smooth only where 1/s folds), "
                         "or keep qcompiler's own format (qcompiler.save(qm, dir))")
            if spec.smoothing == "norm":
                raise ExportFormatError(
                    f"{where}: its smoothing / AWQ scale was folded into a norm inside the captured region, whose "
                    f"rescaled weight is a graph buffer the checkpoint does not write",
                    hint="keep qcompiler's own format (qcompiler.save(qm, dir)), or compile with fold=False")
            x = node.args[0]
            if isinstance(x, fx.Node) and x.target is torch.ops.aten.index_select.default:
                raise ExportFormatError(f"{where}: act-order permutation of the input dims is not written",
                                        hint="compressed-tensors' pack-quantized layout has no input permutation")
            refs = spec.weights
            if spec.format is WeightFormat.UINT:
                qw = get_attr_value(gm, refs.qweight).cpu()  # written from the CPU wherever it runs
                codes = unpack_int4(qw, spec.in_features) if spec.bits == 4 else qw
                scales = get_attr_value(gm, refs.scale).float().cpu()
                zeros = get_attr_value(gm, refs.zeros).cpu() if refs.zeros is not None else None
                off = 2 ** (spec.bits - 1)
                if zeros is not None and int(zeros.max()) > 2 ** spec.bits - 1:
                    raise ExportFormatError(f"{where}: a zero point above {2 ** spec.bits - 1} does not fit "
                                            f"{spec.bits}-bit compressed-tensors zero points")
                g = effective_group_size(spec.in_features, spec.group_size)
                uw = UIntWeights(codes, scales, zeros, spec.bits, 0 if g >= spec.in_features else g)
                out[spec.layer] = _Layer(spec.layer, "uint", spec.bits, uw.group_size, zeros is None, uw.dequantize(),
                                         scales, None if zeros is None else (zeros.to(torch.int16) - off).to(torch.int8))
            elif spec.format is WeightFormat.INT8:
                if spec.outliers is not OutlierMode.NONE or spec.outlier_idx:
                    raise ExportFormatError(
                        f"{where}: fp16 outlier columns (LLM.int8() decomposition) have no compressed-tensors or "
                        f"vLLM equivalent", hint="keep int8-outlier models in qcompiler's own format: "
                                                 "qcompiler.save(qm, dir)")
                if spec.act is not ActGranularity.ROW or spec.weight is not WeightGranularity.CHANNEL:
                    raise ExportFormatError(f"{where}: only per-row (per-token) activations with per-channel "
                                            f"weights are written as W8A8")
                q = get_attr_value(gm, refs.qweight).cpu()
                s = get_attr_value(gm, refs.scale).float().cpu().reshape(-1, 1) / 127.0   # W = q * absmax / 127
                out[spec.layer] = _Layer(spec.layer, "w8a8", 8, 0, True, q.float() * s, s, None)
            else:
                raise ExportFormatError(f"{where}: {spec.format.value} weights have no compressed-tensors "
                                        f"int format", hint="nf4 stays in qcompiler's own format")
    return out


def _scheme(layer: _Layer, targets: list[str]):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    strategy = "group" if layer.group_size else "channel"
    weights = QuantizationArgs(num_bits=layer.bits, type="int", symmetric=layer.symmetric, strategy=strategy,
                               group_size=layer.group_size or None, dynamic=False)
    acts = None
    if layer.kind == "w8a8":
        acts = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    return QuantizationScheme(targets=targets, weights=weights, input_activations=acts)


def _float_state(qm, fresh: nn.Module) -> dict[str, torch.Tensor]:
    """The float tensors of ``fresh``'s state dict, from the compiled model (eager parts, then the
    regions' graph attributes, which keep their module-relative names)."""
    want = dict(fresh.state_dict())
    found = {k: v for k, v in qm.model.state_dict().items() if k in want}
    for region in qm.program.regions:
        for target, v in region.gm.state_dict().items():
            name = ".".join(p for p in [region.path, target.removeprefix("inner.")] if p)
            if name in want and isinstance(v, torch.Tensor):
                found.setdefault(name, v)
    return found


def save_compressed_tensors(qm, path: str | os.PathLike, *, float_layers: tuple[str, ...] = ("lm_head",),
                            packed: bool = True) -> Path:
    """Writes the compiled Hugging Face model ``qm`` to ``path`` as compressed-tensors (config.json
    with ``quantization_config``, safetensors); returns the directory.

    ``float_layers`` are written as the float32 dequantization of their quantized weight (listed in
    the config's ``ignore``): vLLM 0.32 cannot load a quantized ``lm_head``. For a weight-only layer
    that is the same arithmetic qcompiler runs; a W8A8 layer then runs on float activations.

    ``packed=False`` writes weight-only layers as ``int-quantized`` (one int8 per code, zero points
    unpacked) instead of ``pack-quantized``: twice the bytes of int4, but transformers 5.24 with
    compressed-tensors 0.20.1 loads asymmetric (zero-point) int4 only in that layout.

    >>> qm = qcompiler.compile(model, "w4-weight-only", example_inputs=ids)
    >>> qcompiler.save(qm, "tiny-w4", format="compressed-tensors")
    >>> AutoModelForCausalLM.from_pretrained("tiny-w4")       # or: vllm serve tiny-w4
    """
    model, compressor = compressed_model(qm, float_layers=float_layers, packed=packed)
    out = Path(path)
    model.save_pretrained(str(out))
    compressor.update_config(str(out))
    return out


def compressed_model(qm, *, float_layers: tuple[str, ...] = ("lm_head",), packed: bool = True):
    """``(model, compressor)``: a fresh Hugging Face model holding the compressed-tensors state
    (``weight_packed``, ``weight_scale``, ...) of the compiled ``qm``, and the library's
    ``ModelCompressor`` that wrote it (its ``update_config`` writes the config)."""
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    except ImportError:
        raise ExportFormatError("writing compressed-tensors needs the compressed-tensors package",
                                hint="pip install compressed-tensors") from None
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import PreTrainedModel

    from qcompiler.api import QuantizedModel

    qm = qm.__dict__.get("_qcompiler_model", qm)  # a model quantized by from_pretrained(QCompilerConfig)
    hf = getattr(qm, "model", None)
    if not isinstance(qm, QuantizedModel) or not isinstance(hf, PreTrainedModel):
        raise ExportFormatError("format='compressed-tensors' writes a compiled Hugging Face model "
                                f"(a PreTrainedModel), got {type(hf).__name__}")
    layers = _layers(qm)
    as_float = {n: layers.pop(n).weight for n in float_layers if n in layers}
    if not layers:
        raise ExportFormatError("the compiled model has no quantized layer to write")
    config = copy.deepcopy(hf.config)
    with init_empty_weights(include_buffers=False):
        fresh = type(hf)(config)
    state = _float_state(qm, fresh)
    mods = dict(fresh.named_modules())
    dt = next(hf.parameters()).dtype
    for name in dict(fresh.state_dict()):
        layer = name.removesuffix(".weight")
        if (layer in layers or layer in as_float) and name.endswith(".weight"):
            continue
        if name in state:
            set_module_tensor_to_device(fresh, name, "cpu", state[name].detach().to("cpu").clone())
    for name, l in layers.items():
        set_module_tensor_to_device(fresh, f"{name}.weight", "cpu", l.weight.to(dt))
    for name, w in as_float.items():
        set_module_tensor_to_device(fresh, f"{name}.weight", "cpu", w.to(dt))
    fresh.tie_weights()
    missing = [n for n, p in fresh.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ExportFormatError(f"parameter '{missing[0]}' of the model was not found in the compiled model")

    groups: dict[tuple, list[str]] = {}
    for name, l in layers.items():
        groups.setdefault((l.kind, l.bits, l.group_size, l.symmetric), []).append(name)
    linears = [n for n, m in fresh.named_modules() if isinstance(m, nn.Linear)]
    if len(groups) == 1:  # one scheme: target the class, ignore the float layers (what vLLM expects)
        (names,) = groups.values()
        config_groups = {"group_0": _scheme(layers[names[0]], ["Linear"])}
        ignore = [n for n in linears if n not in layers]
    else:
        config_groups = {f"group_{i}": _scheme(layers[names[0]], names) for i, names in enumerate(groups.values())}
        ignore = []
    fmt = "int-quantized" if not packed or all(l.kind == "w8a8" for l in layers.values()) else \
        "pack-quantized" if all(l.kind == "uint" for l in layers.values()) else "mixed-precision"
    qconfig = QuantizationConfig(config_groups=config_groups, ignore=ignore, format=fmt,
                                 quantization_status="frozen")
    apply_quantization_config(fresh, qconfig, show_progress=False)
    with torch.no_grad():
        for name, l in layers.items():
            m = mods[name]
            # the scale as the model's dtype holds it (what an engine running in that dtype reads),
            # kept in float32 with the weight so the library's round(W / s) + zp gives back the codes
            s = l.scale.to(dt).float().reshape(m.weight_scale.shape)
            m.weight_scale.data = s.clone()
            zp = l.zero_point
            g = l.group_size or l.weight.shape[1]
            idx = torch.arange(l.weight.shape[1]) // g
            if l.kind == "uint":
                codes = torch.round(l.weight / l.scale[:, idx].clamp_min(1e-30))
                m.weight.data = codes * s[:, idx]
            else:
                m.weight.data = torch.round(l.weight / l.scale.clamp_min(1e-30)) * s
            if hasattr(m, "weight_zero_point"):
                m.weight_zero_point.data = (zp if zp is not None else torch.zeros_like(m.weight_zero_point.data,
                                            dtype=torch.int8)).to(m.weight_zero_point.dtype).reshape(
                                                m.weight_zero_point.shape).clone()
    compressor = ModelCompressor.from_pretrained_model(fresh, quantization_format=fmt if fmt != "mixed-precision"
                                                       else None)
    compressor.compress_model(fresh)
    return fresh, compressor


def compressed_config(compressor) -> dict:
    """The ``quantization_config`` entry ``compressor.update_config`` writes into config.json."""
    import json
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        compressor.update_config(tmp)
        return json.loads((Path(tmp) / "config.json").read_text())["quantization_config"]
