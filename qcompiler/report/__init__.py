"""The compile report: what was quantized, how, and what it cost.

* :mod:`~qcompiler.report.data`: :class:`Report`, :class:`LayerReport` (plain dataclasses);
* :mod:`~qcompiler.report.build`: :func:`build_report`, run once at the end of ``compile``;
* :mod:`~qcompiler.report.render`: the one renderer, as text (``str(report)``), rich, Markdown
  and JSON (and back from JSON).
"""

from qcompiler.report.build import build_report
from qcompiler.report.data import LayerReport, Report
from qcompiler.report.render import from_dict, from_json, to_json, to_markdown, to_rich, to_text, totals

__all__ = ["Report", "LayerReport", "build_report", "to_text", "to_rich", "to_markdown", "to_json", "from_dict",
           "from_json", "totals"]
