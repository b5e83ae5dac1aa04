"""Report rendering: rich table at any width, Markdown, JSON and back."""

import json
import math

import pytest

from qcompiler.report import LayerReport, Report
from qcompiler.report.render import from_json, outliers_text, to_markdown, totals


@pytest.fixture
def report():
    layers = [
        LayerReport("model.layers.0.mlp.up_proj", "model.layers.0.mlp", (128, 64), "int8 rowxchannel + fp outliers "
                    "(3 static)", "triton:int8_outlier_linear", [3, 17, 40], 32768, 8960, 41.5, 8.4e-3),
        LayerReport("model.layers.0.mlp.down_proj", "model.layers.0.mlp", (64, 128), "int8 rowxchannel + fp outliers "
                    "(dynamic, t=6)", "reference", None, 32768, 8448, math.inf, 0.0,
                    notes=["fell back to the reference op: no Triton on this machine"]),
        LayerReport("lm_head", "lm_head", (256, 64), "float", "aten.linear", None, 65536, 65536,
                    notes=["kept in float by the pipeline"]),
    ]
    return Report("int8-outlier", "triton", "canonicalize-linear,dce", layers, ["model.layers.0.mlp"],
                  [("model.layers.0", "cache argument")], 200000, 150000, 0.01, 0.9999, ["a note"])


def test_json_round_trip(report):
    text = report.to_json()
    d = json.loads(text)  # valid JSON: the infinite SQNR is written as "inf"
    assert d["layers"][1]["sqnr_db"] == "inf" and d["totals"]["quantized"] == 2
    assert from_json(text) == report


def test_markdown(report):
    md = to_markdown(report)
    assert md.startswith("## qcompiler report: scheme `int8-outlier`, backend `triton`")
    assert "| `model.layers.0.mlp.up_proj` | 128x64 |" in md and "3 [3,17,40]" in md and "| exact |" in md
    assert "**total 2/3 quantized**" in md and "fell back to the reference op" in md
    assert report.to_markdown() == md


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_rich_table_fits_every_width(report, width):
    from rich.console import Console

    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(report)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    for r in report.layers:  # every layer has its row, trimmed from the left when narrow
        assert r.layer[-10:] in text
    assert "fell back to the reference" in text.replace("\n", " ").replace("  ", " ") or "note:" in text
    assert "total 2/3 quantized" in text


def test_totals_and_outlier_text(report):
    t = totals(report)
    assert (t["bytes_before"], t["bytes_after"]) == (65536, 17408) and t["min_sqnr_db"] == 41.5
    assert outliers_text(report.layers[0]) == "3 [3,17,40]" and outliers_text(report.layers[1]) == "dynamic"


def test_text_is_the_same_table_as_markdown(report):
    """str(report) and to_markdown come from one set of rows: every cell of one is in the other."""
    from qcompiler.report.render import _row, to_text

    text = str(report)
    assert text == to_text(report) and text.startswith("qcompiler report - scheme int8-outlier, backend triton")
    md = to_markdown(report)
    for r in report.layers:
        for cell in _row(r)[:-1]:  # notes go under the row in text, in their own column in Markdown
            assert cell in text and cell.replace("|", "\\|") in md, cell
        assert all(f"note: {n}" in text for n in r.notes)
    for line in ("2 of 3 linear layers quantized", "whole model (parameters + buffers)", "split: model.layers.0",
                 "note: a note", "worst 41.5 dB"):
        assert line in text and line in md, line


def test_memory_section_in_text_markdown_and_json(report):
    from dataclasses import replace

    from qcompiler.memory_usage import MemoryUsage

    assert "memory" not in str(report)  # no figures recorded: no section
    mem = MemoryUsage(3 * 2**30, 2**20 + 2**19, peak_device_bytes=5 * 2**29, peak_host_bytes=700 * 2**20,
                      host_bytes_at_start=500 * 2**20, device="cuda:0")
    r = replace(report, memory=mem)
    want = ["memory: model 3.00 GiB -> 1.50 MiB (each storage counted once)",
            "memory peak while quantizing: cuda:0 2.50 GiB allocated above the start; "
            "host RSS 700.00 MiB, 500.00 MiB at the start"]
    text, md = str(r), to_markdown(r)
    for line in want:
        assert line in text.splitlines()
        assert f"- {line}" in md.splitlines()
    d = json.loads(r.to_json())
    assert d["memory"]["peak_device_bytes"] == 5 * 2**29 and d["memory"]["bytes_before"] == 3 * 2**30
    assert from_json(r.to_json()) == r
    # on the CPU there is no device peak: the host line alone
    cpu = replace(report, memory=MemoryUsage(2048, 1024, peak_host_bytes=2**20, device="cpu"))
    assert "memory peak while quantizing: host RSS 1.00 MiB" in str(cpu).splitlines()
