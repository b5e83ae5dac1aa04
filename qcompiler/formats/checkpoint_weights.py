"""``checkpoint-weights``: put a checkpoint's quantized weights in place of the linears' float ones.

The readers hand :func:`register_source` a ``{layer: LayerWeights}`` table and get back a key; the
pass ``checkpoint-weights{source=<key>}`` then, for every annotated linear:

* in the table as :class:`UIntWeights`: makes the spec weight-only (bits, group size, zero points
  as stored) and stores the codes through :func:`materialize_uint`; an act-order permutation
  becomes an ``index_select`` of x's last dim in front of the linear (the codes are stored in
  permuted order, so groups are consecutive as ``weight_only_linear`` needs);
* in the table as :class:`Int8Weights`: makes the spec W8A8 (row-wise dynamic activations,
  per-channel weights) with the stored int8 weight;
* not in the table: drops the spec, the layer stays in float (the checkpoint did not quantize it).

``decompose-matmul`` then emits the ops as for any scheme::

    %y = aten.linear(%x, %w, %b)
    ->  %xp = aten.index_select(%x, -1, %perm)          # act-order only
        %y  = qcompiler.weight_only_linear(%xp, %qweight, %scales, %zeros, %b, bits, group_size)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import fx

from qcompiler.contracts import ACT_FLOAT, FORMAT_CHOSEN, LINEARS_ANNOTATED, WEIGHTS_QUANTIZED, Contract
from qcompiler.errors import ConfigError
from qcompiler.formats.layer_weights import Int8Weights, LayerWeights, UIntWeights
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import add_buffer, is_linear, linear_parts, resolve_weight
from qcompiler.passes.quantize_weights import buffer_base, materialize_uint
from qcompiler.spec import (SPEC_KEY, ActGranularity, OutlierMode, WeightFormat, WeightGranularity, WeightRefs,
                            get_spec, update_spec)

__all__ = ["CheckpointWeights", "register_source", "release_source"]

_SOURCES: dict[str, dict[str, LayerWeights]] = {}
_KEYS = itertools.count()


def register_source(weights: dict[str, LayerWeights]) -> str:
    """Makes ``weights`` ({layer path: weights}) available to ``checkpoint-weights{source=key}``."""
    key = f"ckpt{next(_KEYS)}"
    _SOURCES[key] = weights
    return key


def release_source(key: str) -> None:
    _SOURCES.pop(key, None)


def _bias_ref(b_node) -> str | None:
    return b_node.target if isinstance(b_node, fx.Node) and b_node.op == "get_attr" else None


def _permute_input(gm: fx.GraphModule, node: fx.Node, perm: torch.Tensor, base: str) -> None:
    x = linear_parts(node)[0]
    with gm.graph.inserting_before(node):
        idx = gm.graph.get_attr(add_buffer(gm, base + "_perm", perm.long().contiguous()))
        sel = gm.graph.call_function(torch.ops.aten.index_select.default, (x, -1, idx))
    if "val" in x.meta:
        sel.meta["val"] = x.meta["val"]
    node.replace_input_with(x, sel)


def _to(lw: LayerWeights, device: torch.device) -> LayerWeights:
    if isinstance(lw, UIntWeights):
        return UIntWeights(lw.codes.to(device), lw.scales.to(device),
                           lw.zeros.to(device) if lw.zeros is not None else None, lw.bits, lw.group_size,
                           lw.perm.to(device) if lw.perm is not None else None)
    return Int8Weights(lw.qweight.to(device), lw.w_absmax.to(device))


@register_pass("checkpoint-weights")
@dataclass(frozen=True)
class CheckpointWeights(GraphPass):
    source: str = ""

    def contract(self) -> Contract:
        # each layer's format is the checkpoint's: weight-only ones keep float activations, W8A8 ones not
        return Contract(requires={LINEARS_ANNOTATED}, ensures={FORMAT_CHOSEN, WEIGHTS_QUANTIZED},
                        invalidates={ACT_FLOAT})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        if self.source not in _SOURCES:
            raise ConfigError(f"checkpoint-weights: no checkpoint registered as {self.source!r}",
                              hint="this pass is run by qcompiler.load on a checkpoint directory")
        table = _SOURCES[self.source]
        modified = False
        for node in list(gm.graph.nodes):
            spec = get_spec(node) if is_linear(node) else None
            if spec is None:
                continue
            with ctx.at(node):
                lw = table.get(spec.layer)
                if lw is None:
                    del node.meta[SPEC_KEY]
                    ctx.note(spec.layer, "kept in float: not quantized in the checkpoint")
                    continue
                base = buffer_base(spec)
                dev = resolve_weight(gm, linear_parts(node)[1])[0].device  # the checkpoint is read on the CPU
                lw = _to(lw, dev)
                if isinstance(lw, UIntWeights):
                    update_spec(node, act=ActGranularity.NONE, format=WeightFormat.UINT, bits=lw.bits,
                                group_size=lw.group_size, symmetric=lw.zeros is None)
                    if lw.perm is not None:
                        _permute_input(gm, node, lw.perm, base)
                        ctx.note(spec.layer, "act-order: input dims permuted (index_select) before the layer")
                    materialize_uint(gm, node, lw.codes, lw.scales, lw.zeros, ctx)
                elif isinstance(lw, Int8Weights):
                    refs = WeightRefs(qweight=add_buffer(gm, base + "_qweight", lw.qweight.contiguous()),
                                      scale=add_buffer(gm, base + "_wscale", lw.w_absmax.float().contiguous()),
                                      bias=_bias_ref(linear_parts(node)[2]))
                    update_spec(node, act=ActGranularity.ROW, weight=WeightGranularity.CHANNEL,
                                outliers=OutlierMode.NONE, format=WeightFormat.INT8, bits=8, weights=refs)
                modified = True
        return PassResult(gm, modified, preserved=PassResult.ALL)
