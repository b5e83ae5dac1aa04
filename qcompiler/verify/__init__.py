"""The graph verifier run between passes when asked (``compile(..., verify=True)``):
``graph.lint()`` plus qcompiler's own invariants.

* :mod:`qcompiler.verify.verifier`: :func:`verify_graph`, :func:`register_invariant`, the int8
  matmul checks;
* :mod:`qcompiler.verify.weight_only`: the weight-only op checks (codes, scales, zero points).
"""

from qcompiler.verify.verifier import register_invariant, verify_graph
from qcompiler.verify.weight_only import check_weight_only_ops

__all__ = ["verify_graph", "register_invariant", "check_weight_only_ops"]
