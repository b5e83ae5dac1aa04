"""A :class:`~qcompiler.report.Report` as plain text, a rich table, Markdown or JSON, and back
from JSON: one set of columns, rows, totals and summary lines for every form.

One row per linear layer: shape, what it became, outlier dims, weight bytes before/after, SQNR
and relative error on calibration rows, the lowering that runs it, notes (fallbacks and why);
totals at the bottom, then whole-model figures. ``rich`` is needed only for :func:`to_rich`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from qcompiler.report.data import LayerReport, Report

__all__ = ["to_text", "to_rich", "to_markdown", "to_json", "from_dict", "from_json", "outliers_text", "totals",
           "memory_lines"]

_MAX_DIMS = 6  # outlier dims listed before "..."


def outliers_text(r: LayerReport, full: bool = False) -> str:
    if r.outlier_dims is None:
        return "dynamic" if "dynamic" in r.op else "-"
    if not r.outlier_dims:
        return "0"
    dims = r.outlier_dims if full else r.outlier_dims[:_MAX_DIMS]
    more = "" if full or len(r.outlier_dims) <= _MAX_DIMS else ",..."
    return f"{len(r.outlier_dims)} [{','.join(map(str, dims))}{more}]"


def _num(v: float | None, fmt: str) -> str:
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "exact" if v > 0 else "-inf"
    return format(v, fmt)


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f}"


def totals(report: Report) -> dict[str, Any]:
    """The figures of the bottom line: quantized layer count, bytes, worst and mean SQNR."""
    q = report.quantized
    sq = [r.sqnr_db for r in q if r.sqnr_db is not None and math.isfinite(r.sqnr_db)]
    before, after = sum(r.bytes_before for r in q), sum(r.bytes_after for r in q)
    return {"layers": len(report.layers), "quantized": len(q), "bytes_before": before, "bytes_after": after,
            "ratio": before / after if after else None, "min_sqnr_db": min(sq) if sq else None,
            "mean_sqnr_db": sum(sq) / len(sq) if sq else None,
            "fallbacks": sum(1 for r in report.layers if r.op == "float" or r.notes)}


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.2f} MiB"


def memory_lines(report: Report) -> list[str]:
    """``report.memory`` in words: the model's bytes (each storage once: tied weights count once)
    and the peak device / host memory the call that made the model recorded."""
    m = report.memory
    if m is None:
        return []
    lines = [f"memory: model {_size(m.bytes_before)} -> {_size(m.bytes_after)} (each storage counted once)"]
    peaks = []
    if m.peak_device_bytes is not None:
        peaks.append(f"{m.device} {_size(m.peak_device_bytes)} allocated above the start")
    if m.peak_host_bytes is not None:
        start = f", {_size(m.host_bytes_at_start)} at the start" if m.host_bytes_at_start is not None else ""
        peaks.append(f"host RSS {_size(m.peak_host_bytes)}{start}")
    if peaks:
        lines.append("memory peak while quantizing: " + "; ".join(peaks))
    return lines


def _summary_lines(report: Report) -> list[str]:
    t = totals(report)
    lines = [f"{t['quantized']} of {t['layers']} linear layers quantized; their weights "
             f"{t['bytes_before'] / 2**20:.2f} MiB -> {t['bytes_after'] / 2**20:.2f} MiB"
             + (f" ({t['ratio']:.2f}x smaller)" if t["ratio"] else ""),
             f"whole model (parameters + buffers): {report.model_bytes_before / 2**20:.2f} MiB -> "
             f"{report.model_bytes_after / 2**20:.2f} MiB"]
    if t["min_sqnr_db"] is not None:
        lines.append(f"layer SQNR on calibration rows: worst {t['min_sqnr_db']:.1f} dB, mean {t['mean_sqnr_db']:.1f} dB")
    if report.output_rel_error is not None:
        lines.append(f"model output vs float on calibration data: rel. error {report.output_rel_error:.4g}, "
                     f"cosine {report.output_cosine:.6f}")
    lines.extend(memory_lines(report))
    lines.extend(f"split: {path}: {why[:160]}" for path, why in report.split)
    lines.extend(f"note: {n}" for n in report.notes)
    return lines


_COLUMNS = ["layer", "shape", "op", "outliers", "KiB before", "KiB after", "SQNR dB", "rel. err", "lowering", "notes"]


def _row(r: LayerReport) -> list[str]:
    return [r.layer, f"{r.shape[0]}x{r.shape[1]}", r.op, outliers_text(r), _kib(r.bytes_before),
            _kib(r.bytes_after), _num(r.sqnr_db, ".1f"), _num(r.rel_error, ".2e"), r.lowering, "; ".join(r.notes)]


def _total_row(report: Report) -> list[str]:
    t = totals(report)
    return [f"total {t['quantized']}/{t['layers']} quantized", "", "", "", _kib(t["bytes_before"]),
            _kib(t["bytes_after"]), f"min {_num(t['min_sqnr_db'], '.1f')}", "", "", ""]


# Rich columns in the order they are given up when the terminal is narrow (last ones first);
# the second field: no narrower than this. Dropped notes are listed under the table instead.
_RICH_COLUMNS = [("layer", 20), ("shape", 9), ("op", 22), ("outliers", 16), ("KiB before", 10),
                 ("KiB after", 9), ("SQNR dB", 8), ("lowering", 12), ("rel. err", 8), ("notes", 30)]
_RIGHT = {"shape", "KiB before", "KiB after", "SQNR dB", "rel. err"}


def _left_trim(text: str, width: int) -> str:
    return text if len(text) <= width else "\u2026" + text[-(width - 1):]


class _RichReport:
    """Lays the table out for the console width it is printed on: full layer names when they
    fit, else trimmed from the left (the distinctive end stays), then the right-most columns go.
    Every column gets an explicit width, so rich never squeezes a header into pieces."""

    def __init__(self, report: Report, title: str | None):
        self.report, self.title = report, title

    def _widths(self, max_width: int) -> tuple[list[str], dict[str, int]]:
        report = self.report
        natural = {n: max([len(n), w] + [len(c) for c in self._column(n)]) for n, w in _RICH_COLUMNS}
        names = [n for n, _ in _RICH_COLUMNS]
        widths = {n: min(natural[n], w) if n != "notes" else min(natural[n], 48) for n, w in _RICH_COLUMNS}
        widths["layer"] = natural["layer"]
        widths["op"] = natural["op"]

        def total() -> int:  # each column: 2 padding + 1 rule (a space in this box style); + edges
            return sum(widths[n] + 3 for n in names) + 1

        # Give up width in this order: op wraps down to its minimum, layer names get trimmed,
        # then columns go from the right.
        op_min, layer_min = dict(_RICH_COLUMNS)["op"], dict(_RICH_COLUMNS)["layer"]
        widths["op"] = max(op_min, widths["op"] - max(0, total() - max_width))
        widths["layer"] = max(28, widths["layer"] - max(0, total() - max_width))
        while total() > max_width and len(names) > 3:
            names.pop()
        widths["layer"] = max(layer_min, widths["layer"] - max(0, total() - max_width))
        widths["op"] = max(10, widths["op"] - max(0, total() - max_width))  # a very narrow terminal
        for name in ("layer", "op"):  # width left over: full layer names first, then op on one line
            widths[name] = min(natural[name], widths[name] + max(0, max_width - total()))
        return names, widths

    def _column(self, name: str) -> list[str]:
        i = _COLUMNS.index(name)
        return [self._cells(r)[i] for r in self.report.layers] + [_total_row(self.report)[i]]

    @staticmethod
    def _cells(r: LayerReport) -> list[str]:
        cells = _row(r)
        cells[2] = re.sub(r" \(\d+ static\)$", "", cells[2])  # the count is in the outliers column
        return cells

    def __rich_console__(self, console, options):
        from rich import box
        from rich.table import Table
        from rich.text import Text

        report = self.report
        names, widths = self._widths(options.max_width)
        table = Table(title=self.title or f"qcompiler report - scheme {report.scheme}, backend {report.backend}",
                      show_footer=True, header_style="bold", footer_style="bold", box=box.SIMPLE_HEAVY)
        foot = dict(zip(_COLUMNS, _total_row(report)))
        for name in names:
            table.add_column(name, footer=foot[name], justify="right" if name in _RIGHT else "left",
                             width=widths[name], no_wrap=name in ("layer", "shape"), overflow="fold")
        for r in report.layers:
            cells = dict(zip(_COLUMNS, self._cells(r)))
            cells["layer"] = _left_trim(r.layer, widths["layer"])
            style = "dim" if r.op == "float" else ("yellow" if r.notes else None)
            table.add_row(*(cells[n] for n in names), style=style)
        yield table
        lines = [f"pipeline: {report.pipeline}"]
        if "notes" not in names:
            lines += [f"note: {r.layer}: {n}" for r in report.layers for n in r.notes]
        yield Text("\n".join(lines + _summary_lines(report)))


def to_rich(report: Report, title: str | None = None) -> Any:
    """A ``rich`` renderable: the per-layer table (totals in its footer) and the summary lines;
    on a narrow terminal the right-most columns give way and notes move under the table."""
    return _RichReport(report, title)


def to_text(report: Report) -> str:
    """Plain text (``str(report)``): the table with each layer's notes under its row, then the totals
    and the summary lines."""
    cols = [c for c in _COLUMNS if c != "notes"]
    rows = [_row(r)[:len(cols)] for r in report.layers]
    total = _total_row(report)[:len(cols)]
    widths = [max(len(c), *(len(row[i]) for row in rows + [total])) for i, c in enumerate(cols)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if n in _RIGHT else c.ljust(w) for c, w, n in zip(cells, widths, cols)).rstrip()

    head = line(cols)
    out = [f"qcompiler report - scheme {report.scheme}, backend {report.backend}", f"pipeline: {report.pipeline}",
           head, "-" * len(head)]
    for r, cells in zip(report.layers, rows):
        out.append(line(cells))
        out.extend(f"    note: {n}" for n in r.notes)
    out += ["-" * len(head), line(total), *_summary_lines(report)]
    return "\n".join(out)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    out = [f"## qcompiler report: scheme `{report.scheme}`, backend `{report.backend}`", "",
           f"Pipeline: `{report.pipeline}`", "",
           "| " + " | ".join(_COLUMNS) + " |",
           "|" + "|".join("---:" if c in ("shape", "KiB before", "KiB after", "SQNR dB", "rel. err") else "---"
                          for c in _COLUMNS) + "|"]
    for r in report.layers:
        cells = _row(r)
        cells[0] = f"`{cells[0]}`"
        out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    out.append("| " + " | ".join(f"**{c}**" if c else "" for c in _total_row(report)) + " |")
    out.append("")
    out.extend(f"- {_md_cell(line)}" for line in _summary_lines(report))
    return "\n".join(out) + "\n"


def to_json(report: Report, indent: int | None = 2) -> str:
    """Every field of the report plus ``totals``; infinities are written as "inf"."""
    from qcompiler.serialize.values import to_json as jsonable

    d = jsonable(report)
    d["totals"] = jsonable(totals(report))
    return json.dumps(d, indent=indent)


def from_dict(d: dict[str, Any]) -> Report:
    """The inverse of :func:`to_json` (``totals`` is recomputed, not read)."""
    from qcompiler.serialize.values import from_json as typed

    return typed(Report, {k: v for k, v in d.items() if k != "totals"})


def from_json(text: str) -> Report:
    return from_dict(json.loads(text))
