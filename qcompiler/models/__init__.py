"""Real models that ship in PyPI packages, for demos, tests and benchmarks (no hub access)."""

from qcompiler.models.minilm import CALIBRATION_SENTENCES, EVAL_SENTENCES, MiniLM, load_minilm

__all__ = ["MiniLM", "load_minilm", "CALIBRATION_SENTENCES", "EVAL_SENTENCES"]
