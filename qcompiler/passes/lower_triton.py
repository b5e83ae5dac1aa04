"""``lower-triton``: the int8 matmuls of a decomposed graph onto the Triton kernels.

Before (static outliers, after ``decompose-matmul``)::

    %q  = qcompiler.quantize_rowwise(%x, %oidx)
    %y  = qcompiler.int8_linear(%q[0], %q[1], %qweight, %wscale, %q[2], %wout, %b, f16)

After::

    %y  = qcompiler_triton.int8_outlier_linear(%x, %qweight, %wscale, %oidx, %omask, %wout, %b)

``int8_outlier_linear`` picks its kernels at run time from the number of rows: weight-only int8
(X stays 16-bit) for M <= 16, else the int8 GEMM, with X quantized by a separate one-pass kernel
or inside the GEMM: option ``act_quant=auto|separate|fused`` (``auto``, the default, picks by
shape; the others append ``act_quant`` 1 / 2 to the op, see ``backends/triton/act_quant.py``). The dynamic form
becomes ``int8_dynamic_outlier_linear(%x, %qweight, %wscale, threshold, %b)``. Matmuls in any
other shape (per-tensor X, shared quantization with a different consumer) map op for op onto
``qcompiler_triton.int8_linear`` / ``quantize_rowwise``; ``quantize_tensorwise`` stays in torch.

Weight-only ops map onto M-dispatched weight-only kernels (split-K GEMV that unpacks W in
registers for M <= 16, the same kernel tiled over M up to 256 rows, dequantize + cuBLAS above);
NF4's double quantization is fused in::

    %y = qcompiler.weight_only_linear(%x, %qw, %s, %z, %b, 4, 128)
      -> qcompiler_triton.weight_only_uint_linear(%x, %qw, %s, %z, %b, 4, 128)
    %a = qcompiler.dequantize_blockwise_int8(%aq, %a2, %off, 256)
    %y = qcompiler.nf4_linear(%x, %qw, %a, %b, 64)
      -> qcompiler_triton.weight_only_nf4_linear(%x, %qw, %aq, %a2, %off, %b, 64, 256)

Which op handles which reference op is the table :data:`RULES` (one :class:`LoweringRule` each).

Where the kernels cannot run (no CUDA GPU of compute capability >= 7.5 and no
``TRITON_INTERPRET=1``, or activations not float16/bfloat16) the pass raises
:class:`UnsupportedError`, unless ``fallback=true``: then the layer keeps the reference op and the
report says why.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import fx

from qcompiler.contracts import CALIBRATED, DECOMPOSED, LOWERED, Contract
from qcompiler.errors import UnsupportedError
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import add_buffer, get_attr_value
from qcompiler.ops.args import (DequantizeBlockwiseInt8Args, Int8LinearArgs, Int8LinearDynamicOutlierArgs,
                                NF4LinearArgs, QuantizeRowwiseArgs, QuantizeRowwiseDynamicArgs,
                                WeightOnlyLinearArgs, args_of)
from qcompiler.spec import SPEC_KEY, get_spec, update_spec

__all__ = ["LowerTriton", "LoweringRule", "RULES"]

_REF = torch.ops.qcompiler
_SUPPORTED = (torch.float16, torch.bfloat16)


def _item(node, source, index) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_function" and node.target is operator.getitem
            and node.args[0] is source and node.args[1] == index)


def _dtype(node) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return getattr(val, "dtype", None)


@register_pass("lower-triton")
@dataclass(frozen=True)
class LowerTriton(GraphPass):
    fallback: bool = False
    # Where the int8 linears quantize X (backends/triton/act_quant.py): auto | separate | fused.
    act_quant: str = "auto"

    def __post_init__(self):
        from qcompiler.backends.triton.act_quant import parse_act_quant  # late: imports triton
        parse_act_quant(self.act_quant)

    def contract(self) -> Contract:
        return Contract(requires={DECOMPOSED}, ensures={LOWERED}, invalidates={CALIBRATED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        from qcompiler.backends.triton import is_available  # late: imports triton

        ops = torch.ops.qcompiler_triton
        rules = {r.target: r for r in RULES}
        from qcompiler.backends.triton.act_quant import parse_act_quant
        state: dict = {"masks": {}, "act_quant": int(parse_act_quant(self.act_quant))}
        modified = False
        for node in list(gm.graph.nodes):
            rule = rules.get(node.target) if node.op == "call_function" else None
            if rule is None:
                continue
            with ctx.at(node):
                spec = get_spec(node)
                layer = spec.layer if spec is not None else node.name
                wq = get_attr_value(gm, getattr(args_of(node), rule.weight_arg).target)
                ok, why = is_available(wq.device)
                act = rule.act_dtype(node) or _float_weight_dtype(ctx, spec)
                if ok and act not in _SUPPORTED:
                    ok, why = False, f"activations are {act}; the kernels take float16/bfloat16"
                if ok and rule.unsupported is not None:
                    why = rule.unsupported(node)
                    ok = why is None
                if not ok:
                    if not self.fallback:
                        raise UnsupportedError(
                            f"layer '{layer}' cannot run on the Triton kernels: {why}",
                            hint="use a CUDA GPU (compute capability >= 7.5) and a float16/bfloat16 "
                                 "model, or the pipeline option lower-triton{fallback=true} to keep "
                                 "the reference op for such layers")
                    ctx.note(layer, f"lower-triton fell back to the reference op: {why}")
                    continue
                with gm.graph.inserting_before(node):
                    new, how = rule.lower(gm, node, ops, state)
                new.meta.update({k: v for k, v in node.meta.items() if k in (SPEC_KEY, "val")})
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
                if spec is not None:
                    update_spec(new, lowering=f"triton:{how}")
                modified = True
        modified |= self._lower_quantize(gm, ops)
        self._drop_dead(gm)
        return PassResult(gm, modified)

    @staticmethod
    def _static(gm, node, ops, state):
        masks = state["masks"]
        a = Int8LinearArgs.of(node)
        xq, xs, wq, xo = a.xq, a.x_scale, a.wq, a.x_outliers
        q = xq.args[0] if isinstance(xq, fx.Node) and xq.target is operator.getitem else None
        fused = (isinstance(q, fx.Node) and q.op == "call_function"
                 and q.target is _REF.quantize_rowwise.default and _item(xq, q, 0) and _item(xs, q, 1) and (xo is None or _item(xo, q, 2)))
        if fused:
            qa = QuantizeRowwiseArgs.of(q)
            fused = (_dtype(qa.x) in (None, a.out_dtype) and isinstance(qa.outlier_idx, fx.Node)
                     and qa.outlier_idx.op == "get_attr")
        if fused:
            idx = get_attr_value(gm, qa.outlier_idx.target)
            if xo is None and idx.numel():
                fused = False  # outlier columns zeroed but no fp product: keep the op-for-op form
        if not fused:
            return gm.graph.call_function(ops.int8_linear.default, node.args), "int8_linear"
        mask = None
        if idx.numel():
            name = masks.get(qa.outlier_idx.target)
            if name is None:
                k = get_attr_value(gm, wq.target).shape[1]
                m = torch.zeros(k, dtype=torch.int8, device=idx.device)
                m[idx] = 1
                name = masks[qa.outlier_idx.target] = add_buffer(gm, "_qc_triton_outlier_mask", m)
            mask = gm.graph.get_attr(name)
        new = gm.graph.call_function(ops.int8_outlier_linear.default,
                                     (qa.x, wq, a.w_scale, qa.outlier_idx, mask, a.w_outliers, a.bias)
                                     + _act_quant_arg(state))
        return new, "int8_outlier_linear (weight-only int8 for M<=16" + _act_quant_note(state) + ")"

    @staticmethod
    def _dynamic(gm, node, ops, state):
        a = Int8LinearDynamicOutlierArgs.of(node)
        q = a.xq.args[0] if isinstance(a.xq, fx.Node) and a.xq.target is operator.getitem else None
        if (isinstance(q, fx.Node) and q.op == "call_function"
                and q.target is _REF.quantize_rowwise_dynamic.default and QuantizeRowwiseDynamicArgs.of(q).x is a.x
                and _item(a.xq, q, 0) and _item(a.x_scale, q, 1) and _item(a.outlier_mask, q, 2)):
            new = gm.graph.call_function(ops.int8_dynamic_outlier_linear.default,
                                         (a.x, a.wq, a.w_scale, float(QuantizeRowwiseDynamicArgs.of(q).threshold), a.bias)
                                         + _act_quant_arg(state))
            return new, "int8_dynamic_outlier_linear (weight-only int8 for M<=16" + _act_quant_note(state) + ")"
        return (gm.graph.call_function(ops.int8_linear_dynamic_outlier.default, node.args),
                "int8_linear_dynamic_outlier")

    @staticmethod
    def _lower_quantize(gm, ops) -> bool:
        """Row-wise quantize nodes read only by lowered ops run on Triton too; one that feeds a
        layer that fell back (no GPU here, say) stays in torch with it."""
        quant = (_REF.quantize_rowwise.default, _REF.quantize_rowwise_dynamic.default)
        changed = False
        for node in gm.graph.nodes:
            if not (node.op == "call_function" and node.target in quant and node.users):
                continue
            if all(_on_triton(c) for c in _consumers(node)) and _dtype(args_of(node).x) in (None, *_SUPPORTED):
                node.target = getattr(ops, node.target.overloadpacket.__name__).default
                changed = True
        return changed

    @staticmethod
    def _drop_dead(gm) -> None:
        """The quantize nodes (and their getitems) the fused ops replaced."""
        quant = {_REF.quantize_rowwise.default, _REF.quantize_rowwise_dynamic.default}
        for node in reversed(list(gm.graph.nodes)):
            if node.users or node.op != "call_function":
                continue
            if node.target in quant or node.target is _REF.dequantize_blockwise_int8.default or (node.target is operator.getitem and isinstance(node.args[0], fx.Node)
                                        and node.args[0].target in quant):
                gm.graph.erase_node(node)


def _act_quant_arg(state: dict) -> tuple:
    """The whole-linear ops' trailing ``act_quant`` argument, left out when it is the default."""
    return (state["act_quant"],) if state["act_quant"] else ()


def _act_quant_note(state: dict) -> str:
    return {1: "; X quantized by a separate kernel", 2: "; X quantized inside the GEMM"}.get(state["act_quant"], "")


def _consumers(node: fx.Node) -> list[fx.Node]:
    """What reads ``node``'s value, looking through the getitems that unpack a tuple output."""
    return [c for u in node.users for c in (u.users if u.target is operator.getitem else (u,))]


def _on_triton(node: fx.Node) -> bool:
    return node.op == "call_function" and getattr(node.target, "namespace", None) == "qcompiler_triton"


def _float_weight_dtype(ctx: PassContext, spec) -> Optional[torch.dtype]:
    """The layer's float weight dtype, where the graph carries no ``val`` for x (fx tracing)."""
    w = ctx.state.float_weights.get(spec.layer) if spec is not None else None
    return getattr(w, "dtype", None)


_WO_DISPATCH = ": split-K GEMV for M<=16, mixed-input GEMM for M<=256, dequantize+cuBLAS above"


def _lower_uint(gm, node, ops, state):
    a = WeightOnlyLinearArgs.of(node)  # the Triton op takes the same arguments
    new = gm.graph.call_function(ops.weight_only_uint_linear.default, tuple(a))
    return new, f"weight_only_uint_linear (w{a.bits} g{a.group_size}{_WO_DISPATCH})"


def _lower_nf4(gm, node, ops, state):
    a = NF4LinearArgs.of(node)
    dq = _REF.dequantize_blockwise_int8.default
    if isinstance(a.absmax, fx.Node) and a.absmax.op == "call_function" and a.absmax.target is dq:
        d = DequantizeBlockwiseInt8Args.of(a.absmax)
        args, how = (a.x, a.qweight, d.q, d.absmax, d.offset, a.bias, a.block_size, d.block_size), " +dq fused"
    else:
        args, how = (a.x, a.qweight, a.absmax, None, None, a.bias, a.block_size, 1), ""
    new = gm.graph.call_function(ops.weight_only_nf4_linear.default, args + _nf4_levels(gm, a.qweight, a.x, state))
    return new, f"weight_only_nf4_linear (b{a.block_size}{how}{_WO_DISPATCH})"


def _nf4_levels(gm, qweight, x, state) -> tuple:
    """The NF4 table (float32, and in x's dtype) as buffers of ``gm``, one pair per graph: a constant
    the kernels read, held by the model rather than made on first use (which, under CUDA graphs,
    would leave it in the graph's memory pool)."""
    from qcompiler.quant.nf4 import NF4_CODEBOOK  # late, like the ops namespace
    dtype = _dtype(x) or torch.float16
    key = ("nf4_levels", dtype)
    if key not in state:
        device = get_attr_value(gm, qweight.target).device if isinstance(qweight, fx.Node) else "cpu"
        names = (add_buffer(gm, "nf4_levels", NF4_CODEBOOK.to(device=device, dtype=torch.float32)),
                 add_buffer(gm, "nf4_levels_half", NF4_CODEBOOK.to(device=device, dtype=dtype)))
        state[key] = tuple(gm.graph.get_attr(n) for n in names)
    return state[key]


def _uint_bits(node) -> Optional[str]:
    bits = WeightOnlyLinearArgs.of(node).bits
    return None if bits in (4, 8) else f"{bits}-bit codes; the kernels take 4- or 8-bit codes"


@dataclass(frozen=True)
class LoweringRule:
    """One reference op and how ``lower-triton`` replaces it.

    ``weight_arg``: name of the stored weight's argument (its device decides availability);
    ``act_dtype(node)``: the activations' dtype (None if the graph does not say);
    ``unsupported(node)``: why these operands cannot run on the kernels, or None;
    ``lower(gm, node, ops, state) -> (new node, description)``; ``state`` is per pass run.
    """

    name: str
    target: object
    weight_arg: str
    act_dtype: Callable[[fx.Node], Optional[torch.dtype]]
    lower: Callable
    unsupported: Optional[Callable[[fx.Node], Optional[str]]] = None


RULES: tuple[LoweringRule, ...] = (
    LoweringRule("int8-linear", _REF.int8_linear.default, "wq", lambda n: Int8LinearArgs.of(n).out_dtype,
                 LowerTriton._static),
    LoweringRule("int8-linear-dynamic-outlier", _REF.int8_linear_dynamic_outlier.default, "wq",
                 lambda n: _dtype(Int8LinearDynamicOutlierArgs.of(n).x), LowerTriton._dynamic),
    LoweringRule("weight-only-uint", _REF.weight_only_linear.default, "qweight",
                 lambda n: _dtype(WeightOnlyLinearArgs.of(n).x) or _dtype(n), _lower_uint, _uint_bits),
    LoweringRule("weight-only-nf4", _REF.nf4_linear.default, "qweight",
                 lambda n: _dtype(NF4LinearArgs.of(n).x) or _dtype(n), _lower_nf4),
)
