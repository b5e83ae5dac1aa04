"""``quantize-weights``: each annotated linear's weight, quantized in its spec's format, as buffers
on the graph module named in the spec (``spec.weights``). The linear is not yet rewritten.

The quantizer is chosen by ``spec.format`` from :data:`QUANTIZERS`:

* ``INT8`` (W8A8): absmax int8 per output channel or per tensor. Static outlier input dims of W
  are kept in float and zeroed in the int8 copy, so they do not inflate the channel scales.
* ``UINT`` (weight-only): round-to-nearest unsigned codes, group-wise scales (+ zero points),
  4-bit codes packed two per byte (see ``qcompiler/ops/weight_only.py`` for the layout).
* ``NF4`` (weight-only): NormalFloat codes, block-wise absmax, optionally double-quantized.

Layers whose spec already has ``weights`` (set by a smarter algorithm such as GPTQ, through
:func:`materialize_uint`) are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from qcompiler.errors import UnsupportedError
from qcompiler.ops import quantize_weight
from qcompiler.contracts import FORMAT_CHOSEN, LINEARS_ANNOTATED, WEIGHTS_QUANTIZED, Contract
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import add_buffer, is_linear, linear_parts, resolve_weight
from qcompiler.quant import double_quantize, effective_group_size, pack_int4, quantize_nf4, quantize_uint
from qcompiler.spec import (ActGranularity, LinearQuantSpec, OutlierMode, WeightFormat, WeightGranularity, WeightRefs,
                            get_spec, update_spec)

__all__ = ["QuantizeWeights", "QUANTIZERS", "materialize_uint", "buffer_base"]

# (gm, spec, float weight [N, K], buffer name prefix, bias buffer name) -> the stored buffers
Quantizer = Callable[[fx.GraphModule, LinearQuantSpec, torch.Tensor, str, "str | None"], WeightRefs]


def buffer_base(spec: LinearQuantSpec) -> str:
    """The prefix of the buffers holding ``spec``'s layer: ``_qc_encoder_layer_0_query``."""
    return "_qc_" + spec.layer.replace(".", "_").replace("<", "").replace(">", "")


def _bias_ref(b_node) -> str | None:
    return b_node.target if isinstance(b_node, fx.Node) and b_node.op == "get_attr" else None


def _quantize_int8(gm, spec, w, base, bias) -> WeightRefs:
    if spec.act is ActGranularity.NONE:
        raise UnsupportedError(f"layer '{spec.layer}' keeps float activations but has the int8 (W8A8) format",
                               hint="weight-only pipelines need annotate-weight-format{format=uint|nf4} "
                                    "after annotate-linears{act=none}")
    idx = torch.tensor(spec.outlier_idx, dtype=torch.long, device=w.device)
    w_int = w.detach()
    outlier_weight = None
    static = spec.outliers is OutlierMode.STATIC and bool(spec.outlier_idx)
    per_channel = spec.weight is WeightGranularity.CHANNEL
    if static:
        outlier_weight = add_buffer(gm, base + "_wout", w_int.index_select(1, idx).contiguous())
    if static and per_channel and w_int.shape[0]:  # rows are independent: zero the outlier columns a row chunk at a time, no full copy
        parts = [quantize_weight(w_int[i:i + 4096].index_fill(1, idx, 0)) for i in range(0, w_int.shape[0], 4096)]
        qw, scale = torch.cat([q for q, _ in parts]), torch.cat([sc for _, sc in parts])
    else:
        qw, scale = quantize_weight(w_int.index_fill(1, idx, 0) if static else w_int, per_channel=per_channel)
    return WeightRefs(qweight=add_buffer(gm, base + "_qweight", qw), scale=add_buffer(gm, base + "_wscale", scale),
                      outlier_weight=outlier_weight,
                      outlier_idx=add_buffer(gm, base + "_oidx", idx) if static else None, bias=bias)


def _uint_refs(gm, spec, base, codes, scales, zeros, bias) -> WeightRefs:
    n, k = spec.out_features, spec.in_features
    g = effective_group_size(k, spec.group_size)
    groups = -(-k // g)
    if codes.shape != (n, k) or codes.is_floating_point():
        raise UnsupportedError(f"layer '{spec.layer}': codes must be an integer [{n}, {k}] tensor, "
                               f"got {codes.dtype} {tuple(codes.shape)}")
    top = 2 ** spec.bits - 1
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > top):
        raise UnsupportedError(f"layer '{spec.layer}': {spec.bits}-bit codes must lie in 0..{top}",
                               hint="codes are unsigned: add the zero point before storing them")
    if tuple(scales.shape) != (n, groups):
        raise UnsupportedError(f"layer '{spec.layer}': scales must be [{n}, {groups}] (group size {g}), "
                               f"got {tuple(scales.shape)}")
    if (zeros is None) != spec.symmetric or (zeros is not None and tuple(zeros.shape) != (n, groups)):
        want = "no zero points (symmetric spec)" if spec.symmetric else f"[{n}, {groups}] zero points"
        raise UnsupportedError(f"layer '{spec.layer}': expected {want}",
                               hint="symmetric codes use the implicit zero point 2^(bits-1)")
    stored = pack_int4(codes) if spec.bits == 4 else codes.to(torch.uint8).contiguous()
    return WeightRefs(qweight=add_buffer(gm, base + "_qweight", stored),
                      scale=add_buffer(gm, base + "_wscale", scales.float().contiguous()),
                      zeros=add_buffer(gm, base + "_wzero", zeros.to(torch.uint8).contiguous())
                      if zeros is not None else None, bias=bias)


def _quantize_uint(gm, spec, w, base, bias) -> WeightRefs:
    u = quantize_uint(w, spec.bits, spec.group_size, spec.symmetric)
    return _uint_refs(gm, spec, base, u.codes, u.scales, u.zeros, bias)


def _quantize_nf4(gm, spec, w, base, bias) -> WeightRefs:
    codes, absmax, _ = quantize_nf4(w, spec.group_size)
    qweight = add_buffer(gm, base + "_qweight", pack_int4(codes))
    if not spec.double_quant:
        return WeightRefs(qweight=qweight, scale=add_buffer(gm, base + "_absmax", absmax), bias=bias)
    q, a2, offset = double_quantize(absmax)
    return WeightRefs(qweight=qweight, scale=add_buffer(gm, base + "_absmax_q", q),
                      scale_scale=add_buffer(gm, base + "_absmax_scale", a2),
                      scale_offset=add_buffer(gm, base + "_absmax_offset", offset), bias=bias)


QUANTIZERS: dict[WeightFormat, Quantizer] = {
    WeightFormat.INT8: _quantize_int8,
    WeightFormat.UINT: _quantize_uint,
    WeightFormat.NF4: _quantize_nf4,
}


def materialize_uint(gm: fx.GraphModule, node: fx.Node, codes: torch.Tensor, scales: torch.Tensor,
                     zeros: torch.Tensor | None = None, ctx: PassContext | None = None) -> LinearQuantSpec:
    """Stores weights computed elsewhere (GPTQ, AWQ, ...) as ``node``'s quantized weight.

    ``node`` is an annotated linear whose spec has ``format=UINT`` (``bits``, ``group_size``,
    ``symmetric`` say how to read the codes); ``codes [N, K]`` are unsigned integers in
    ``0 .. 2^bits - 1`` (unpacked), ``scales [N, ceil(K / g)]`` the steps, ``zeros`` the same
    shape (None when symmetric: the zero point is then ``2^(bits-1)``). 4-bit codes are packed.
    Returns the updated spec; ``quantize-weights`` then leaves the layer alone. With ``ctx`` the
    float weight is recorded for the report's error estimate.
    """
    spec = get_spec(node)
    if spec is None or spec.format is not WeightFormat.UINT:
        raise UnsupportedError(f"node '{node.name}' is not an annotated weight-only (uint) linear",
                               hint="run annotate-linears{act=none},annotate-weight-format{format=uint,...} first")
    _, w_node, b_node = linear_parts(node)
    if ctx is not None:
        resolved = resolve_weight(gm, w_node)
        if resolved is not None:
            ctx.state.float_weights[spec.layer] = resolved[0]
    refs = _uint_refs(gm, spec, buffer_base(spec), codes, scales, zeros, _bias_ref(b_node))
    return update_spec(node, weights=refs)


@register_pass("quantize-weights")
@dataclass(frozen=True)
class QuantizeWeights(GraphPass):
    def contract(self) -> Contract:
        return Contract(requires={LINEARS_ANNOTATED, FORMAT_CHOSEN}, ensures={WEIGHTS_QUANTIZED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for node in gm.graph.nodes:
            spec = get_spec(node) if is_linear(node) else None
            if spec is None or spec.weights is not None:
                continue
            with ctx.at(node):
                _, w_node, b_node = linear_parts(node)
                w, _ = resolve_weight(gm, w_node)
                ctx.state.float_weights[spec.layer] = w
                refs = QUANTIZERS[spec.format](gm, spec, w, buffer_base(spec), _bias_ref(b_node))
                update_spec(node, weights=refs)
                modified = True
        return PassResult(gm, modified, preserved=PassResult.ALL)
