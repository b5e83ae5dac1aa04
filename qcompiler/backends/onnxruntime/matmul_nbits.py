"""``lower-ort-matmul-nbits``: int8 (W8A8) linears become weight-only 8-bit linears, which ONNX
Runtime runs as ``com.microsoft.MatMulNBits``.

Why: on ORT's CUDA execution provider ``MatMulInteger`` runs 5x slower than an fp16 MatMul, while
``MatMulNBits`` (8-bit weights, block-wise steps, activations in fp16) is close to fp16 at large M
and faster at M = 1 (``../shared/GPU.md``).

Accuracy: the scheme's int8 weights are reused exactly (``codes = wq + 128``, every block's step
``ws / 127``) and X is not quantized at all, so each layer's error is the scheme's weight error
alone, never more than the scheme's. Static outlier input dims, whose weights the scheme keeps in
float, can keep their exact fp product (``outliers=keep``)::

    %q = qcompiler.quantize_rowwise(%x, %oidx)          %y  = qcompiler.weight_only_linear(
    %y = qcompiler.int8_linear(%q[0], %q[1], %wq, %ws,          %x, %codes, %steps, None, %b, 8, 128)
                               %q[2], %wout, %b, f16)    %xo = aten.index_select(%x, -1, %oidx)
                                                         %y2 = aten.add(%y, aten.matmul(%xo, %wout.T))

Folding writes the outlier weights into the 8-bit weight instead (one op per layer, no Gather and
second MatMul): their block keeps the channel's step when they fit under it, else gets a step of
its own and is rounded afresh. Those weights are then rounded, and they multiply the largest
activations, so folding can cost accuracy. ``outliers=auto`` (the default) folds a layer when, on
the export's example inputs, folding adds less error than the scheme's own rounding of X does
(:func:`folding_error`: then the folded layer stays within the scheme's accuracy); without
example activations it keeps the exact product. ``keep`` and ``fold`` force one way. The report
notes say which layers were folded, with both errors.
Dynamic-outlier layers need neither: their int8 weight holds every column, and the scheme
multiplies the outlier columns by those same int8 weights.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, replace

import torch
from torch import Tensor, fx

from qcompiler.ops import MATMUL_OPS
from qcompiler.pass_manager import GraphPass, PassContext, PassResult, register_pass
from qcompiler.graph.nodes import add_buffer, get_attr_value
from qcompiler.ops.args import Int8LinearArgs, Int8LinearDynamicOutlierArgs, QuantizeRowwiseArgs, args_of
from qcompiler.spec import SPEC_KEY, get_spec

__all__ = ["LowerOrtMatMulNBits", "OutlierFolding", "choose_block_size", "int8_to_uint8_blocks", "folding_error",
           "FOLDED_KEY", "record_matmul_inputs"]

_ops = torch.ops.qcompiler
FOLDED_KEY = "qcompiler.onnx.folded_outliers"  # node.meta of a lowered linear: outlier dims folded in


class OutlierFolding(enum.Enum):
    KEEP = "keep"  # the exact fp product of the static outlier columns: never less accurate than the scheme
    FOLD = "fold"  # outlier weights rounded into the 8-bit weight: one op per layer
    AUTO = "auto"  # fold where the estimated error stays within the scheme's, else keep
_PREFERRED_BLOCKS = (128, 64, 32, 16)


def choose_block_size(k: int) -> int:
    """The block (group) size for K input dims: the largest of 128/64/32/16 dividing K (ORT's fast
    CUDA kernels need K % block == 0), else the largest below K (K padded), else K itself."""
    for b in _PREFERRED_BLOCKS:
        if k % b == 0:
            return b
    return next((b for b in _PREFERRED_BLOCKS if b < k), max(k, 1))


def int8_to_uint8_blocks(wq: Tensor, w_scale: Tensor, block: int, outlier_idx: Tensor | None = None,
                         outlier_weight: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
    """The int8 weight ``wq [N, K]`` (absmax ``w_scale [N]`` or ``[1]``) as symmetric 8-bit codes
    ``[N, K]`` uint8 and steps ``[N, ceil(K / block)]`` float32 (``qcompiler::weight_only_linear``'s
    layout). ``outlier_weight [N, n]`` (float) is written into columns ``outlier_idx``. Returns
    ``(codes, steps, blocks given a step of their own)``."""
    n, k = wq.shape
    groups = -(-k // block) if k else 0
    step = (w_scale.float().reshape(-1).expand(n) / 127.0).contiguous()
    steps = step[:, None].expand(n, groups).clone()
    q = wq.to(torch.int32).clone()
    rescaled = 0
    if outlier_idx is not None and outlier_idx.numel():
        w = wq.float() * step[:, None]
        w[:, outlier_idx] = outlier_weight.float()
        for g in torch.unique(outlier_idx // block).tolist():
            lo, hi = g * block, min(k, (g + 1) * block)
            blk = w[:, lo:hi]
            s = torch.maximum(step, blk.abs().amax(dim=1) / 127.0)
            rescaled += int((s > step).any())
            steps[:, g] = s
            q[:, lo:hi] = torch.round(blk / s[:, None]).clamp_(-127, 127).to(torch.int32)
    return (q + 128).to(torch.uint8), steps, rescaled


def folding_error(x: Tensor, wq: Tensor, w_scale: Tensor, outlier_idx: Tensor, outlier_weight: Tensor,
                  codes: Tensor, steps: Tensor, block: int) -> tuple[float, float]:
    """On activations ``x [rows, K]``: the squared error folding adds to the layer's output,
    ``||x (W_fold - W_scheme)^T||^2``, and the one the scheme's rounding of X adds,
    ``||(X_hat - X) W_scheme^T||^2`` (the non-outlier columns, int8 per row). Both are measured
    against the scheme's own weights (int8 + exact outlier columns), whose rounding error is common
    to the scheme, the folded and the kept layer; so the folded layer is at most as far from the
    float one as the scheme is when the first number is not larger than the second."""
    x = x.to(wq.device, torch.float32).reshape(-1, wq.shape[1])
    n, k = wq.shape
    step = w_scale.to(torch.float32).reshape(-1).expand(n) / 127.0
    w = wq.to(torch.float32) * step[:, None]
    w[:, outlier_idx] = outlier_weight.to(torch.float32)
    blocks = torch.arange(k, device=wq.device) // block
    w_fold = (codes.to(torch.float32) - 128.0) * steps.to(torch.float32)[:, blocks]
    e_fold = (x @ (w_fold - w).t()).square().sum().item()
    xq, xs, _ = torch.ops.qcompiler.quantize_rowwise(x, outlier_idx)
    x_inlier = x.index_fill(1, outlier_idx, 0.0)
    e_x = ((xq.to(torch.float32) * (xs / 127.0) - x_inlier) @ w.t()).square().sum().item()
    return e_fold, e_x


class _Tap(torch.nn.Module):
    def __init__(self, sink: list):
        super().__init__()
        self.sink = sink

    def forward(self, x):
        self.sink.append(x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float32))
        return x


def record_matmul_inputs(gms: list[fx.GraphModule], run, max_rows: int = 1024) -> dict[str, Tensor]:
    """The float input of every int8 matmul in ``gms`` (layer -> ``[rows, K]``, at most
    ``max_rows``) while ``run()`` executes them; the graphs are left as they were."""
    seen: dict[str, list] = {}
    added = []
    for gm in gms:
        for node in list(gm.graph.nodes):
            spec = get_spec(node)
            if node.op != "call_function" or node.target not in MATMUL_OPS or spec is None:
                continue
            x = _source_x(node)
            name = f"_qc_tap_{len(added)}"
            gm.add_submodule(name, _Tap(seen.setdefault(spec.layer, [])))
            with gm.graph.inserting_after(x):
                added.append((gm, gm.graph.call_module(name, (x,)), name))
        gm.recompile()
    try:
        with torch.no_grad():
            run()
    finally:
        for gm, node, name in added:
            gm.graph.erase_node(node)
            gm.delete_submodule(name)
        for gm in gms:
            gm.recompile()
    return {layer: torch.cat(rows)[:max_rows] for layer, rows in seen.items() if rows}


def _source_x(node: fx.Node) -> fx.Node:
    """The float input of an int8 matmul: the tensor its activation-quantize op reads."""
    if node.target is _ops.int8_linear_dynamic_outlier.default:
        return Int8LinearDynamicOutlierArgs.of(node).x
    item = Int8LinearArgs.of(node).xq
    assert item.target is operator.getitem, f"{node.name}: int8 operand is not a quantize output"
    return args_of(item.args[0]).x


def _static_outliers(gm: fx.GraphModule, node: fx.Node) -> tuple[Tensor | None, Tensor | None]:
    a = Int8LinearArgs.of(node) if node.target is _ops.int8_linear.default else None
    if a is None or a.x_outliers is None:
        return None, None
    quantize = QuantizeRowwiseArgs.of(a.x_outliers.args[0])  # x_outliers = getitem(quantize_rowwise(...), 2)
    return get_attr_value(gm, quantize.outlier_idx.target), get_attr_value(gm, a.w_outliers.target)


@register_pass("lower-ort-matmul-nbits")
@dataclass(frozen=True)
class LowerOrtMatMulNBits(GraphPass):
    """Every int8 matmul -> ``qcompiler::weight_only_linear`` (8-bit) on the same int8 weights.
    ``block_size=0`` picks it per layer (:func:`choose_block_size`); ``outliers`` says what
    becomes of static outlier columns (:class:`OutlierFolding`). Run ``dce`` after it."""

    block_size: int = 0
    outliers: OutlierFolding = OutlierFolding.AUTO

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target not in MATMUL_OPS:
                continue
            with ctx.at(node):
                self._lower(gm, node, ctx)
                modified = True
        return PassResult(gm, modified)

    def _decide(self, spec, wq, ws, idx, w_out, block, ctx) -> tuple[bool, str]:
        """Fold this layer's static outliers? And why, for the report."""
        if self.outliers is not OutlierFolding.AUTO:
            return self.outliers is OutlierFolding.FOLD, f"outliers={self.outliers.value}"
        x = ctx.state.layer_inputs.get(spec.layer if spec else None)
        if x is None or x.shape[-1] != wq.shape[1]:
            return False, "no example activations to measure folding on"
        codes, steps, _ = int8_to_uint8_blocks(wq, ws, block, idx, w_out)
        e_fold, e_x = folding_error(x, wq, ws, idx, w_out, codes, steps, block)
        rel = f"on the example, folding adds {e_fold:.3g}, the scheme's X rounding {e_x:.3g} (squared error)"
        return e_fold <= e_x, rel

    def _lower(self, gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> None:
        dynamic = node.target is _ops.int8_linear_dynamic_outlier.default
        a = args_of(node)  # both ops name their weight operands wq, w_scale, bias
        wq_node, ws_node, bias = a.wq, a.w_scale, a.bias
        wq, ws = get_attr_value(gm, wq_node.target), get_attr_value(gm, ws_node.target)
        idx, w_out = _static_outliers(gm, node)
        k = wq.shape[1]
        block = self.block_size or choose_block_size(k)
        spec = get_spec(node)
        fold, why = self._decide(spec, wq, ws, idx, w_out, block, ctx) if idx is not None else (False, "")
        codes, steps, rescaled = int8_to_uint8_blocks(wq, ws, block, *((idx, w_out) if fold else ()))
        base = wq_node.target.removesuffix("_qweight")
        x = _source_x(node)
        out_dtype = a.out_dtype if not dynamic else None
        with gm.graph.inserting_before(node):
            y = wol = gm.graph.call_function(_ops.weight_only_linear.default,
                                       (x, gm.graph.get_attr(add_buffer(gm, base + "_nbits_codes", codes)),
                                        gm.graph.get_attr(add_buffer(gm, base + "_nbits_steps", steps)),
                                        None, bias, 8, min(block, k) if k else block))
            x_dtype = x.meta["val"].dtype if "val" in x.meta else out_dtype
            if idx is not None and not fold:  # the exact fp outlier product, as in the scheme
                quantize = QuantizeRowwiseArgs.of(a.x_outliers.args[0])
                xo = gm.graph.call_function(torch.ops.aten.index_select.default, (x, -1, quantize.outlier_idx))
                wt = gm.graph.call_function(torch.ops.aten.t.default, (a.w_outliers,))
                y = gm.graph.call_function(torch.ops.aten.add.Tensor,
                                           (y, gm.graph.call_function(torch.ops.aten.matmul.default, (xo, wt))))
            if out_dtype is not None and x_dtype is not None and out_dtype != x_dtype:
                y = gm.graph.call_function(torch.ops.aten.to.dtype, (y, out_dtype))
        if fold:
            wol.meta[FOLDED_KEY] = idx.numel()
        if spec is not None:
            note = (f"weight-only on ONNX Runtime: X stays {str(x_dtype).removeprefix('torch.')}, "
                    f"int8 weights reused exactly (block {block})")
            if fold:
                how = (f"{rescaled} block(s) given their own step" if rescaled else
                       "their weights fit the channel steps")
                note += f"; {idx.numel()} static outlier dims folded into the 8-bit weight ({how}; {why})"
            elif idx is not None:
                note += f"; {idx.numel()} static outlier dims kept as an exact fp product ({why})"
            wol.meta[SPEC_KEY] = replace(spec, notes=spec.notes + (note,))
        if "val" in node.meta:
            y.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(y)
        gm.graph.erase_node(node)
