"""Op-level ONNX Runtime timings of every form an int8 linear can take, per weight shape and M:
what ``layer_forms.choose_plan`` picks from, and what ORT's kernels cap.

One single-op ONNX graph per (shape, form), built with ``onnx.helper`` (no export needed), run
with inputs and outputs bound on the device (``run_with_iobinding``), median of 30 runs after 5
warm-ups. X is fp16 ``[M, K]``, W ``[N, K]``:

    fp16          MatMul(X, W^T) with fp16 W (the baseline)
    dequant       int8 W * steps in the graph, cast to fp16 (ORT folds it at load), MatMul
    nbits         com.microsoft.MatMulNBits 8-bit, block 128, fp16 steps (the ort-cuda form)
    nbits_fpaintb the same with ORT's CUTLASS fpA_intB GEMM/GEMV switched on (ep.cuda.fpa_intb_gemm)
    int8          W8A8: row-wise int8 quantization of X, MatMulInteger, dequantize (the generic form)
    outliers      the exact fp16 outlier product alone: Gather(X, 8 columns) + MatMul [8, N] + Add

    python benchmarks/ort_op_timings.py [--shapes 4096x4096,11008x4096,4096x11008] [--ms 1,16,2048]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

__all__ = ["FORMS", "graph_for", "time_form", "op_timings"]

FORMS = ("fp16", "dequant", "nbits", "nbits_fpaintb", "int8", "outliers")
BLOCK, N_OUTLIERS = 128, 8


def graph_for(form: str, n: int, k: int, seed: int = 0):
    """A one-layer ONNX model ``Y = X @ W^T`` in ``form`` (X fp16 [M, K], M dynamic)."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(seed)
    wq = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    steps = (rng.random(n, dtype=np.float32) * 1e-3 + 1e-4).astype(np.float32)
    inits, nodes = [], []
    x = h.make_tensor_value_info("X", T.FLOAT16, ["M", k])
    y = h.make_tensor_value_info("Y", T.FLOAT16, ["M", n])

    def init(name, arr):
        inits.append(nh.from_array(arr, name))

    def c(name, arr):
        init(name, np.asarray(arr))
        return name

    if form == "fp16":
        init("Wt", (wq.astype(np.float32) * steps[:, None]).T.astype(np.float16).copy())
        nodes.append(h.make_node("MatMul", ["X", "Wt"], ["Y"]))
    elif form == "dequant":
        init("Wq", wq)
        init("S", steps[:, None])
        nodes += [h.make_node("Cast", ["Wq"], ["Wf"], to=T.FLOAT), h.make_node("Mul", ["Wf", "S"], ["Wd"]),
                  h.make_node("Cast", ["Wd"], ["Wh"], to=T.FLOAT16), h.make_node("Transpose", ["Wh"], ["Wt"], perm=[1, 0]),
                  h.make_node("MatMul", ["X", "Wt"], ["Y"])]
    elif form in ("nbits", "nbits_fpaintb"):
        init("B", (wq.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // BLOCK, BLOCK))
        init("scales", np.repeat(steps, k // BLOCK).astype(np.float16))
        nodes.append(h.make_node("MatMulNBits", ["X", "B", "scales"], ["Y"], domain="com.microsoft",
                                 K=k, N=n, bits=8, block_size=BLOCK))
    elif form == "int8":
        init("Wqt", wq.T.copy())
        nodes += [h.make_node("Cast", ["X"], ["xf"], to=T.FLOAT), h.make_node("Abs", ["xf"], ["ax"]),
                  h.make_node("ReduceMax", ["ax", c("ax1", np.array([-1], np.int64))], ["amax"], keepdims=1),
                  h.make_node("Max", ["amax", c("tiny", np.array(1e-12, np.float32))], ["s"]),
                  h.make_node("Div", [c("c127", np.array(127.0, np.float32)), "s"], ["inv"]),
                  h.make_node("Mul", ["xf", "inv"], ["xs"]), h.make_node("Round", ["xs"], ["xr"]),
                  h.make_node("Clip", ["xr", c("lo", np.array(-127.0, np.float32)), c("hi", np.array(127.0, np.float32))], ["xc"]),
                  h.make_node("Cast", ["xc"], ["xq"], to=T.INT8),
                  h.make_node("MatMulInteger", ["xq", "Wqt"], ["acc"]), h.make_node("Cast", ["acc"], ["accf"], to=T.FLOAT),
                  h.make_node("Mul", ["accf", "s"], ["y1"]),
                  h.make_node("Mul", ["y1", c("wsn", (steps / 127.0).astype(np.float32))], ["y2"]),
                  h.make_node("Cast", ["y2"], ["Y"], to=T.FLOAT16)]
    elif form == "outliers":
        init("idx", rng.choice(k, N_OUTLIERS, replace=False).astype(np.int64))
        init("Wo", rng.standard_normal((N_OUTLIERS, n)).astype(np.float16))
        init("Y0", np.zeros(n, np.float16))
        nodes += [h.make_node("Gather", ["X", "idx"], ["xo"], axis=1), h.make_node("MatMul", ["xo", "Wo"], ["yo"]),
                  h.make_node("Add", ["yo", "Y0"], ["Y"])]
    else:
        raise ValueError(form)
    graph = h.make_graph(nodes, form, [x], [y], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)], ir_version=9)


def time_form(path: Path, form: str, ms: list[int], provider: str, iters: int = 30) -> dict[int, float]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    if form == "nbits_fpaintb":
        so.add_session_config_entry("ep.cuda.fpa_intb_gemm", "1")
    sess = ort.InferenceSession(str(path), so, providers=[provider, "CPUExecutionProvider"])
    device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
    out = {}
    for m in ms:
        x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(m).standard_normal((m, sess.get_inputs()[0].shape[1]))
                                             .astype(np.float16), device, 0)
        io = sess.io_binding()
        io.bind_ortvalue_input("X", x)
        io.bind_output("Y", device, 0)
        for _ in range(5):
            sess.run_with_iobinding(io)
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            sess.run_with_iobinding(io)
            ts.append(time.perf_counter() - t)
        out[m] = statistics.median(ts) * 1e3
    return out


def op_timings(shapes: list[tuple[int, int]], ms: list[int], provider: str, folder: Path,
               forms=FORMS) -> dict[str, dict[str, dict[int, float]]]:
    """``{"NxK": {form: {M: ms}}}``; a form that fails records its error instead."""
    import onnx
    res: dict = {}
    for n, k in shapes:
        for form in forms:
            path = folder / f"op_{form}_{n}x{k}.onnx"
            try:
                onnx.save(graph_for(form, n, k), str(path))
                res.setdefault(f"{n}x{k}", {})[form] = time_form(path, form, ms, provider)
            except Exception as e:  # noqa: BLE001 - record and go on
                res.setdefault(f"{n}x{k}", {})[form] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            finally:
                path.unlink(missing_ok=True)
            print(f"  op {n}x{k} {form}: {res[f'{n}x{k}'][form]}", flush=True)
    return res


def main(argv=None) -> None:
    import tempfile
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    p.add_argument("--ms", default="1,16,2048")
    p.add_argument("--cpu", action="store_true")
    a = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    provider = "CPUExecutionProvider" if a.cpu else "CUDAExecutionProvider"
    res = op_timings(shapes, [int(m) for m in a.ms.split(",")], provider, Path(tempfile.mkdtemp()))
    out = Path(os.environ.get("OUT") or ".") / "ort_op_timings.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
