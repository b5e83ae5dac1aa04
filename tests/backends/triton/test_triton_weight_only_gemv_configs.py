"""The measured per-shape configs (``weight_only_gemv_configs``): every entry holds its format's
groups whole, the kinds map as documented, and a known layer shape really runs with its entry
(the interpreter stands in for the GPU: the table is switched on, without PTX) and matches the
float64 reference."""

from __future__ import annotations

import importlib

import pytest
import torch
from weight_only_problems import FORMATS, dequant_ref, make_problem, make_x16, rounding_tol, within

from qcompiler.backends.triton._weight_operand import per_tile

C = importlib.import_module("qcompiler.backends.triton.weight_only_gemv_configs")
R = importlib.import_module("qcompiler.backends.triton.weight_only_gemv_row")
G = importlib.import_module("qcompiler.backends.triton.weight_only_gemv")

KIND_GROUP = {"w8": (1, 0), "w4": (2, 128), "nf4": (2, 64), "i8o": (1, 0)}  # pack, group (0: one per row)


def test_weight_kinds():
    assert C.weight_kind(0, 1, 4096, 1, False) == "w8"
    assert C.weight_kind(0, 2, 128, 32, False) == "w4"
    assert C.weight_kind(1, 2, 64, 64, False) == "nf4"
    assert C.weight_kind(0, 1, 4096, 1, True) == "i8o"
    assert C.weight_kind(0, 2, 64, 64, False) is None  # not measured: the autotuner decides
    assert C.weight_kind(0, 1, 64, 64, False) is None


def test_every_entry_holds_whole_groups():
    for (n, k), entries in C._ROW_SHAPES.items():
        for kind, (bn, kb, split, warps) in zip(C._KINDS, entries):
            pack, group = KIND_GROUP[kind]
            groups = k // group if group else 1
            assert R.row_tile_ok(group or k, groups, pack, kb), (n, k, kind)
            assert bn & (bn - 1) == 0 and split >= 1 and warps in (2, 4, 8)
    for (n, k), entries in C._DOT16_SHAPES.items():
        for kind, e in zip(C._KINDS, entries):
            pack, group = KIND_GROUP[kind]
            if e is not None:
                assert per_tile(group or k, k // group if group else 1, e[1]), (n, k, kind)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreter (CPU) behaviour")
def test_tables_are_off_under_the_interpreter():
    assert C.row_table_config("w8", 256, 2048) is None
    assert C.dot16_table_config("w8", 256, 2048) is None


@pytest.mark.parametrize("fmt", ["w8-channel", "w4-g128", "nf4-b64"], ids=str)
def test_known_shape_runs_its_table_entry(fmt, monkeypatch):
    # TinyLlama's k/v projection (N = 256, K = 2048): its row entry (w8: 2 x 2048 B tiles, no
    # split; NF4: split-K 4) and its 16-row tensor-core entry, launched and checked.
    monkeypatch.setattr(C, "interpreting", lambda: False)
    monkeypatch.setattr(R, "_TABLED", {})
    monkeypatch.setattr(G, "_DOT16", {})
    dtype = torch.float16
    p = make_problem(FORMATS[fmt], 256, 2048, dtype, seed=1)
    op = p.operand()
    entry = R._tabled(op, op.qweight.shape[1])
    assert entry is not None and entry[0]["BLOCK_N"] == C._ROW_SHAPES[256, 2048][C._KINDS.index(
        C.weight_kind(op.fmt, op.pack, op.group, op.groups, op.signed))][0]
    for m in (1, 16):
        x = make_x16(m, 2048, dtype, seed=m)
        y = R.weight_only_gemv_row(x, op, p.bias) if m == 1 else G.weight_only_gemv(x, op, p.bias)
        ref = dequant_ref(p, x)
        within(y, ref, rounding_tol(x, p, ref, dtype))
    assert G._DOT16[op.key()] is not None
