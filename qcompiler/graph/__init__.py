"""fx graph helpers shared by passes, the verifier, the report and the backends; they import no pass.

* :mod:`~qcompiler.graph.nodes`: finding linears, resolving their weights, naming layers, adding buffers;
* :mod:`~qcompiler.graph.rebind`: giving one linear a new weight;
* :mod:`~qcompiler.graph.observer`: the calibration observer module;
* :mod:`~qcompiler.graph.snapshot`: a plain, JSON-able picture of a graph.
"""

__all__ = ["nodes", "rebind", "observer", "snapshot"]
