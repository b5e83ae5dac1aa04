"""Compiled models run inference only: ``eval()`` works, ``train()`` says what to do instead."""

from __future__ import annotations

from qcompiler.errors import UnsupportedError

__all__ = ["training_error"]


def training_error(what: str) -> UnsupportedError:
    """The error ``train()`` raises on a compiled model or one of its captured regions."""
    return UnsupportedError(
        f"{what} cannot be put in training mode: qcompiler's compiled models run inference only "
        "(their graphs were captured in eval mode, with dropout off, and their weights are stored "
        "quantized, so they have no float parameters to train); eval() and train(False) work",
        hint="to train with quantization in the loop use qat = qcompiler.prepare_qat(model, scheme, "
             "example_inputs=...), train qat as usual, then qcompiler.convert(qat, ...); to fine-tune "
             "the float model, train it before qcompiler.compile")
