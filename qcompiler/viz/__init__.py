"""Pictures of a compiled model: matplotlib plots (:mod:`qcompiler.viz.plots`) and the graph view
(:mod:`qcompiler.viz.graph_view`, DOT / SVG / standalone HTML). Imported on use, so that the core
package never needs matplotlib."""

__all__ = ["plots", "graph_view"]  # the graph snapshot they draw: qcompiler.graph.snapshot
