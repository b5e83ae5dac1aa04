"""The ``qcompiler_triton`` custom ops: registered, same results as the launchers, traceable and
exportable (the kernels stay opaque calls), and ``is_available`` says why not."""

from __future__ import annotations

import pytest
import torch
from triton_problems import DEVICE, make_static_weights, make_x

import qcompiler.backends.triton as qt
from qcompiler.backends.triton.quantize_rowwise import outlier_mask_from_idx

OPS = torch.ops.qcompiler_triton
REF = torch.ops.qcompiler


def test_ops_registered():
    for name in ("quantize_rowwise", "quantize_rowwise_dynamic", "int8_linear",
                 "int8_linear_dynamic_outlier", "weight_only_int8_linear", "int8_outlier_linear",
                 "int8_dynamic_outlier_linear"):
        assert hasattr(OPS, name), name


def test_quantize_op_matches_reference():
    x, idx = make_x(5, 130, 3, torch.float16, seed=1)
    for got, ref in zip(OPS.quantize_rowwise(x, idx), REF.quantize_rowwise(x, idx)):
        assert torch.equal(got, ref)
    for got, ref in zip(OPS.quantize_rowwise_dynamic(x, 6.0), REF.quantize_rowwise_dynamic(x, 6.0)):
        assert torch.equal(got, ref)


class _Layer(torch.nn.Module):
    """What lower-triton leaves for one static linear: a single op call on buffers."""

    def __init__(self, k=96, n=40, n_out=3):
        super().__init__()
        _, idx = make_x(1, k, n_out, torch.float16, seed=2)
        _, wq, ws, wo, bias = make_static_weights(n, k, idx, torch.float16, seed=2)
        for name, t in dict(wq=wq, ws=ws, idx=idx, mask=outlier_mask_from_idx(idx, k), wo=wo,
                            bias=bias).items():
            self.register_buffer(name, t)

    def forward(self, x):
        return OPS.int8_outlier_linear(x, self.wq, self.ws, self.idx, self.mask, self.wo,
                                       self.bias) * 2


def test_op_fake_impl_and_export():
    layer = _Layer()
    x = make_x(20, 96, 0, torch.float16, seed=3)[0]
    ep = torch.export.export(layer, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert OPS.int8_outlier_linear.default in targets
    y = ep.module()(x)
    assert y.shape == (20, 40) and y.dtype == torch.float16
    assert torch.equal(y, layer(x))
    gm = torch.fx.experimental.proxy_tensor.make_fx(layer)(x)
    assert "qcompiler_triton.int8_outlier_linear" in gm.code


def test_is_available_under_this_process():
    ok, why = qt.is_available(DEVICE)
    assert ok, why


def test_is_available_reasons(monkeypatch):
    # Without the interpreter a CPU device cannot run the kernels; the reason says so.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, why = qt.is_available("cpu")
    assert not ok and "not a CUDA device" in why
    if not torch.cuda.is_available():
        ok, why = qt.is_available("cuda")
        assert not ok and "CUDA is not available" in why
    else:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 0))
        ok, why = qt.is_available("cuda")
        assert not ok and "7.0" in why
