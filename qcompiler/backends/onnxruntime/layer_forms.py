"""Which ONNX Runtime operator runs each int8 (W8A8) linear: one *form* per weight shape, chosen
for one range of M (tokens per call) from op-level timings.

=========  ======================================================================  =============
form       what the file holds / what runs                                          GPU memory
=========  ======================================================================  =============
nbits      MatMulNBits 8-bit on the scheme's int8 weights, X in fp16; static        int8
           outliers folded per ``outliers`` (``matmul_nbits.py``)
dequant    the int8 codes and steps, dequantized in the graph to X's dtype with    fp16
           the static outlier columns written in exactly; ORT folds that at load,
           so a plain cuBLAS MatMul runs (as fast as the fp16 export)
int8       MatMulInteger int8 x int8 + fp outlier MatMul (the scheme exactly)       int8
=========  ======================================================================  =============

Accuracy: ``nbits`` (unfolded) and ``dequant`` multiply the scheme's own weights with X not
quantized, so neither is less accurate than the scheme; ``int8`` is the scheme.

A *plan* maps a weight shape ``(N, K)`` to a form, written ``"NxK:form;NxK:form"`` (the
``plan`` option of ``lower-ort-matmul-nbits``). :func:`choose_plan` takes op-level timings
``{(N, K): {form: ms}}`` at one M and keeps the fastest form of each shape; an export per M
bucket (``benchmarks/bench_onnxruntime.py`` builds one for M = 1 and one for M >= 16) then runs
each call on the graph made for its M. ``dequant`` gives up the int8 weight memory on the GPU,
which is why the plan is per bucket: at M = 1, where MatMulNBits is faster than fp16, the int8
weights stay.
"""

from __future__ import annotations

import enum
from dataclasses import replace

import torch
from torch import fx

from qcompiler.errors import ConfigError
from qcompiler.ops.args import QuantizeRowwiseArgs, args_of
from qcompiler.spec import SPEC_KEY, get_spec

__all__ = ["LayerForm", "parse_plan", "format_plan", "choose_plan", "lower_dequant"]

_aten = torch.ops.aten
_ops = torch.ops.qcompiler


class LayerForm(enum.Enum):
    NBITS = "nbits"
    DEQUANT = "dequant"
    INT8 = "int8"


def parse_plan(text: str) -> dict[tuple[int, int], LayerForm]:
    """``"4096x4096:nbits;11008x4096:dequant"`` -> ``{(4096, 4096): NBITS, (11008, 4096): DEQUANT}``."""
    plan = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        shape, _, form = item.partition(":")
        try:
            n, k = (int(v) for v in shape.lower().split("x"))
            plan[(n, k)] = LayerForm(form.strip())
        except ValueError:
            raise ConfigError(f"lower-ort-matmul-nbits: cannot read plan item {item!r}",
                              hint="write NxK:form;... with form nbits, dequant or int8") from None
    return plan


def format_plan(plan: dict[tuple[int, int], LayerForm]) -> str:
    return ";".join(f"{n}x{k}:{form.value}" for (n, k), form in sorted(plan.items()))


def choose_plan(timings: dict[tuple[int, int], dict[str, float]]) -> dict[tuple[int, int], LayerForm]:
    """The fastest measured form of each weight shape (``timings``: shape -> form -> ms)."""
    return {shape: LayerForm(min(by_form, key=by_form.get)) for shape, by_form in timings.items() if by_form}


def lower_dequant(gm: fx.GraphModule, node: fx.Node) -> None:
    """Replace the int8 matmul ``node`` by ``x @ dequant(W)^T (+ b)`` in aten ops (form ``dequant``)."""
    from qcompiler.backends.onnxruntime.matmul_nbits import _source_x
    dynamic = node.target is _ops.int8_linear_dynamic_outlier.default
    a = args_of(node)  # both int8 ops name their weight operands wq, w_scale, bias
    wq, ws, bias, x = a.wq, a.w_scale, a.bias, _source_x(node)
    out_dtype = None if dynamic else a.out_dtype
    x_dtype = x.meta["val"].dtype if "val" in x.meta else (out_dtype or torch.float32)
    g = gm.graph
    with g.inserting_before(node):
        w = g.call_function(_aten._to_copy.default, (wq,), {"dtype": torch.float32})
        step = g.call_function(_aten.div.Tensor, (g.call_function(_aten.reshape.default, (ws, [-1, 1])), 127.0))
        w = g.call_function(_aten.mul.Tensor, (w, step))
        n_out = 0
        if not dynamic and a.x_outliers is not None:  # static outliers: their exact fp weights, in place
            idx = QuantizeRowwiseArgs.of(a.x_outliers.args[0]).outlier_idx  # x_outliers = getitem(quantize, 2)
            w_out = g.call_function(_aten._to_copy.default, (a.w_outliers,), {"dtype": torch.float32})
            w = g.call_function(_aten.index_copy.default, (w, 1, idx, w_out))
            n_out = 1
        w = g.call_function(_aten._to_copy.default, (w,), {"dtype": x_dtype})
        y = g.call_function(_aten.matmul.default, (x, g.call_function(_aten.t.default, (w,))))
        if bias is not None:
            y = g.call_function(_aten.add.Tensor, (y, bias))
        if out_dtype is not None and out_dtype != x_dtype:
            y = g.call_function(_aten._to_copy.default, (y,), {"dtype": out_dtype})
    spec = get_spec(node)
    if spec is not None:
        label = "onnx:int8 dequantized at load + MatMul" + (" (outliers written in exactly)" if n_out else "")
        note = (f"ONNX Runtime form 'dequant': int8 codes in the file, {str(x_dtype).removeprefix('torch.')} "
                "weights in memory (folded at load), X not quantized")
        y.meta[SPEC_KEY] = replace(spec, lowering=label, notes=spec.notes + (note,))
    if "val" in node.meta:
        y.meta["val"] = node.meta["val"]
    node.replace_all_uses_with(y)
    g.erase_node(node)
