"""Named op arguments: every qcompiler op has an accessor whose fields are its schema's names."""

import pytest
import torch
from torch import fx

import qcompiler.ops.args as op_args
from qcompiler.ops.args import Int8LinearArgs, QuantizeRowwiseArgs, args_of

_CLASSES = [getattr(op_args, n) for n in op_args.__all__ if n.endswith("Args") and n != "OpArgs"]


def _qcompiler_ops():
    ns = torch.ops.qcompiler
    return {getattr(ns, name).default for name in dir(ns)
            if isinstance(getattr(ns, name, None), torch._ops.OpOverloadPacket)}


def test_every_op_has_an_accessor_named_like_its_schema():
    assert {c.op for c in _CLASSES} == _qcompiler_ops()
    for cls in _CLASSES:
        assert list(cls._fields) == [a.name for a in cls.op._schema.arguments], cls


def test_of_reads_positional_and_keyword_arguments():
    g = fx.Graph()
    x, idx = g.placeholder("x"), g.placeholder("idx")
    q = g.call_function(torch.ops.qcompiler.quantize_rowwise.default, (x,), {"outlier_idx": idx})
    a = QuantizeRowwiseArgs.of(q)
    assert (a.x, a.outlier_idx) == (x, idx) and args_of(q) == a
    a.set_on(q, outlier_idx=x)
    assert q.args == (x, x) and q.kwargs == {}
    assert args_of(x) is None  # a placeholder is no op call
    with pytest.raises(TypeError, match="not qcompiler.int8_linear"):
        Int8LinearArgs.of(q)


def test_triton_ops_share_the_reference_schemas_and_fakes():
    pytest.importorskip("triton")
    import qcompiler.backends.triton.ops  # noqa: F401 - defines torch.ops.qcompiler_triton
    from torch._subclasses.fake_tensor import FakeTensorMode

    ref, tri = torch.ops.qcompiler, torch.ops.qcompiler_triton
    for name in ("quantize_rowwise", "quantize_rowwise_dynamic", "int8_linear", "int8_linear_dynamic_outlier"):
        assert str(getattr(tri, name).default._schema).split("::")[1] == \
            str(getattr(ref, name).default._schema).split("::")[1]
    with FakeTensorMode():  # shapes and dtypes only: the fake implementations answer
        x, idx = torch.empty(3, 5, 16, dtype=torch.float16), torch.empty(2, dtype=torch.int64)
        for a, b in zip(tri.quantize_rowwise(x, idx), ref.quantize_rowwise(x, idx)):
            assert (a.shape, a.dtype) == (b.shape, b.dtype)
