"""Accuracy table: every registered qcompiler scheme, and peers, on the real all-MiniLM-L6-v2 (CPU).

Each method quantizes the same fp32 model, calibrated (where it calibrates) on one set of
sentences and evaluated on another: mean-pooled, L2-normalized sentence embeddings are compared
with fp32's by cosine (mean and worst over the evaluation sentences). "linear weights kept" is
the bytes of the linear layers' stored weights (codes + scales + zero points + fp outlier
columns; float layers at full size) over their fp32 bytes; "model kept" is the same for every
parameter and buffer of the model (the 46.9 MB word embedding stays fp32 in every method).

    python benchmarks/accuracy.py                 # prints the Markdown table, writes docs/accuracy.md
    python benchmarks/accuracy.py --no-peers      # qcompiler schemes only
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import qcompiler
from qcompiler.models import CALIBRATION_SENTENCES, EVAL_SENTENCES, MiniLM, load_minilm

OUT = Path(__file__).resolve().parent.parent / "docs" / "accuracy.md"
# Extra rows with non-default options, for schemes that are registered.
VARIANTS = {"w4-weight-only": ({"symmetric": False},), "nf4": ({"double_quant": True},)}
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Row:
    method: str
    what: str
    mean_cos: float | None = None
    min_cos: float | None = None
    linear_kept: float | None = None   # share of the linear layers' fp32 weight bytes
    model_kept: float | None = None    # share of all parameter + buffer bytes
    seconds: float | None = None
    note: str = ""


def _nbytes(t: torch.Tensor) -> int:
    """Bytes of a tensor, looking inside tensor subclasses (torchao) at what they store."""
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_nbytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


class Bench:
    def __init__(self, ml: MiniLM):
        self.ml = ml
        self.cal = ml.encode(CALIBRATION_SENTENCES, 16)
        self.eval = ml.encode(EVAL_SENTENCES, 16)
        self.ref = ml.embed(ml.model, self.eval)
        self.model_bytes = sum(_nbytes(t) for t in ml.model.state_dict().values())
        self.linear_bytes = sum(_nbytes(m.weight) for m in _linears(ml.model).values())

    def cosines(self, emb: torch.Tensor) -> tuple[float, float]:
        c = (emb * self.ref).sum(-1)
        return c.mean().item(), c.min().item()

    def measure(self, row: Row, build: Callable[[], tuple[Callable, int, int]]) -> Row:
        """``build() -> (embed function, linear bytes after, model bytes after)``; failures become notes."""
        t = time.perf_counter()
        try:
            embed, lin_after, model_after = build()
            row.seconds = time.perf_counter() - t
            row.mean_cos, row.min_cos = self.cosines(embed())
            row.linear_kept = lin_after / self.linear_bytes if lin_after else None
            row.model_kept = model_after / self.model_bytes if model_after else None
        except Exception as e:  # noqa: BLE001 - a method that does not run here is a row, not a crash
            row.note = (row.note + "; " if row.note else "") + f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            if os.environ.get("QC_BENCH_DEBUG"):
                traceback.print_exc()
        return row

    # ------------------------------------------------------------------ qcompiler schemes
    def scheme(self, name: str, options: dict | None = None) -> Row:
        options = options or {}
        desc = qcompiler.schemes.get_scheme(name).description
        label = f"qcompiler `{name}`" + "".join(f" {k}={v}" for k, v in options.items())

        def build():
            qm = qcompiler.compile(self.ml.model, name, self.cal, progress=False, **options)
            rep = qm.report()
            lin_after = sum(r.bytes_after for r in rep.layers)
            lin_before = sum(r.bytes_before for r in rep.layers)
            assert lin_before == self.linear_bytes, (lin_before, self.linear_bytes)
            return (lambda: self.ml.embed(qm, self.eval)), lin_after, rep.model_bytes_after

        return self.measure(Row(label, desc), build)

    # ------------------------------------------------------------------ peers
    def _swap_linears(self, make: Callable[[nn.Linear], tuple[nn.Module, int]]):
        """A copy of the model with every nn.Linear replaced by ``make(linear) -> (module, bytes)``."""
        model = copy.deepcopy(self.ml.model)
        lin_after = 0
        for name, lin in _linears(model).items():
            parent, _, attr = name.rpartition(".")
            new, nbytes = make(lin)
            setattr(model.get_submodule(parent) if parent else model, attr, new)
            lin_after += nbytes
        return model, lin_after, self.model_bytes - self.linear_bytes + lin_after

    def torch_ao_dynamic(self) -> Row:
        def build():
            from torch.ao.quantization import quantize_dynamic
            model = quantize_dynamic(copy.deepcopy(self.ml.model), {nn.Linear}, dtype=torch.qint8)
            lin_after = 0
            for m in model.modules():
                if hasattr(m, "_packed_params") and hasattr(m, "weight") and callable(m.weight):
                    lin_after += m.weight().int_repr().numel() + 8  # int8 codes + one scale/zero point
            return (lambda: self.ml.embed(model, self.eval)), lin_after, \
                self.model_bytes - self.linear_bytes + lin_after
        return self.measure(Row("torch.ao `quantize_dynamic` qint8", "per-tensor int8 weights, dynamic per-tensor "
                                "int8 activations (fbgemm)"), build)

    def torchao(self, config: str, what: str) -> Row:
        def build():
            import torchao.quantization as tq
            model = copy.deepcopy(self.ml.model)
            tq.quantize_(model, getattr(tq, config)())
            lin_after = sum(_nbytes(m.weight) for m in _linears(model).values())
            return (lambda: self.ml.embed(model, self.eval)), lin_after, \
                self.model_bytes - self.linear_bytes + lin_after
        import importlib.metadata as md
        version = md.version("torchao") if importlib_has("torchao") else "not installed"
        return self.measure(Row(f"torchao {version} `{config}`", what), build)

    def bnb(self, four_bit: bool, double_quant: bool = False) -> Row:
        def make4(lin: nn.Linear):
            import bitsandbytes as bnb
            new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                    quant_type="nf4", compute_dtype=torch.float32, compress_statistics=double_quant)
            new.load_state_dict(lin.state_dict())
            new = new.to("cpu")
            qs = new.weight.quant_state
            n = _nbytes(new.weight.data) + _nbytes(qs.absmax)
            if qs.nested:
                n += _nbytes(qs.state2.absmax) + 4  # second-level absmax + offset (the 256-entry code is shared)
            return new, n

        def make8(lin: nn.Linear):
            import bitsandbytes as bnb
            new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      has_fp16_weights=False, threshold=6.0)
            new.load_state_dict(lin.state_dict())
            new = new.to("cpu")
            return new, _nbytes(new.weight.data) + _nbytes(new.weight.SCB)

        def build():
            model, lin_after, model_after = self._swap_linears(make4 if four_bit else make8)
            return (lambda: self.ml.embed(model, self.eval)), lin_after, model_after
        import importlib.metadata as md
        version = md.version("bitsandbytes") if importlib_has("bitsandbytes") else "not installed"
        name = ("`Linear4bit` nf4" + (" + double quant" if double_quant else "")) if four_bit else \
            "`Linear8bitLt` threshold 6"
        what = "NF4 weights, block 64, fp32 compute" if four_bit else "LLM.int8(): int8 with fp16 outlier columns"
        return self.measure(Row(f"bitsandbytes {version} {name}", what), build)

    def ort(self, weight_type: str) -> Row:
        def build():
            import onnx
            import onnxruntime as ort
            from onnxruntime.quantization import QuantType, quantize_dynamic
            tmp = Path(tempfile.mkdtemp(prefix="qc_acc_"))
            fp32, q = tmp / "minilm.onnx", tmp / f"minilm_{weight_type}.onnx"
            self._export_onnx(fp32)
            quantize_dynamic(str(fp32), str(q), weight_type=getattr(QuantType, weight_type))
            graph_f = onnx.load(str(fp32)).graph
            init_f = {i.name: _onnx_bytes(i) for i in graph_f.initializer}
            init_q = {i.name: _onnx_bytes(i) for i in onnx.load(str(q)).graph.initializer}
            matmul_w = {n.input[1] for n in graph_f.node if n.op_type == "MatMul" and n.input[1] in init_f}
            quantized = [n[: -len("_quantized")] for n in init_q if n.endswith("_quantized")]
            gathers = [n for n in quantized if n not in matmul_w]
            quantized = [n for n in quantized if n in matmul_w]
            lin_before = sum(init_f[n] for n in quantized)
            lin_after = sum(init_q[n + s] for n in quantized for s in ("_quantized", "_scale", "_zero_point")
                            if n + s in init_q)
            sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
            row.note = (f"{len(quantized)} MatMul weights (the pooler is not in the exported graph) and "
                        f"{len(gathers)} embedding tables quantized")

            def embed():
                out = []
                for b in self.eval:
                    h = torch.from_numpy(sess.run(None, {k: b[k].numpy() for k in _INPUTS})[0])
                    mask = b["attention_mask"].unsqueeze(-1).float()
                    out.append(torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
                return torch.cat(out)
            total_f, total_q = sum(init_f.values()), sum(init_q.values())
            return embed, lin_after * self.linear_bytes / lin_before, total_q * self.model_bytes / total_f

        import onnxruntime
        row = Row(f"ONNX Runtime {onnxruntime.__version__} `quantize_dynamic` {weight_type}",
                  "per-tensor int8 weights, dynamic per-tensor activations")
        return self.measure(row, build)

    def _export_onnx(self, path: Path) -> None:
        class Hidden(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        example = tuple(self.eval[0][k] for k in _INPUTS)
        axes = {k: {0: "batch", 1: "seq"} for k in (*_INPUTS, "hidden")}
        torch.onnx.export(Hidden(copy.deepcopy(self.ml.model)), example, str(path), input_names=list(_INPUTS),
                          output_names=["hidden"], dynamic_axes=axes, dynamo=False, opset_version=17)


def _onnx_bytes(init) -> int:
    from onnx import numpy_helper
    return numpy_helper.to_array(init).nbytes


def importlib_has(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.4f}"


def table(rows: list[Row]) -> str:
    lines = ["| method | what it does | mean cos | worst cos | linear weights kept | model kept | time s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        secs = f"{r.seconds:.0f}" if r.seconds is not None else "-"
        what = r.what + (f" ({r.note})" if r.note else "")
        lines.append(f"| {r.method} | {what} | {_fmt(r.mean_cos)} | {_fmt(r.min_cos)} | "
                     f"{_fmt(r.linear_kept, True)} | {_fmt(r.model_kept, True)} | {secs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-peers", action="store_true", help="only qcompiler's schemes")
    ap.add_argument("--schemes", default="", help="comma-separated subset of qcompiler.list_schemes()")
    ap.add_argument("--out", default=str(OUT), help="where the Markdown goes ('' to skip writing)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    ml = load_minilm()
    bench = Bench(ml)
    names = [s for s in args.schemes.split(",") if s] or qcompiler.list_schemes()
    rows = []
    for name in names:
        for options in ({}, *VARIANTS.get(name, ())):
            print(f"... {name} {options or ''}", file=sys.stderr, flush=True)
            rows.append(bench.scheme(name, options))
    if not args.no_peers:
        peers = [lambda: bench.ort("QInt8"), lambda: bench.ort("QUInt8"), bench.torch_ao_dynamic,
                 lambda: bench.torchao("Int8WeightOnlyConfig", "int8 weights per channel, fp activations"),
                 lambda: bench.torchao("Int8DynamicActivationInt8WeightConfig",
                                       "int8 per channel x dynamic int8 per row (vector-wise)"),
                 lambda: bench.torchao("Int4WeightOnlyConfig", "int4 weights, group 128"),
                 lambda: bench.bnb(four_bit=False), lambda: bench.bnb(four_bit=True),
                 lambda: bench.bnb(four_bit=True, double_quant=True)]
        for p in peers:
            rows.append(p())
            print(f"... {rows[-1].method}", file=sys.stderr, flush=True)
    md = table(rows)
    header = (f"all-MiniLM-L6-v2 (real weights, fp32, {len(_linears(ml.model))} linear layers), calibrated on "
              f"{len(CALIBRATION_SENTENCES)} sentences, evaluated on {len(EVAL_SENTENCES)} other sentences "
              f"(`qcompiler.models`): cosine of mean-pooled, normalized sentence embeddings to fp32. "
              f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}, "
              f"{datetime.date.today().isoformat()}. Time: seconds to quantize (capture + calibrate + passes + "
              f"report for qcompiler; export + quantize for ONNX Runtime), not inference; on a shared machine, "
              f"indicative only.")
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("## Accuracy on all-MiniLM-L6-v2\n\nProduced by `python benchmarks/accuracy.py`.\n\n"
                                  + header + "\n\n" + md + "\n")
    return md


if __name__ == "__main__":
    main()
