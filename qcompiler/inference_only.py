"""Compiled models run inference only: ``eval()`` works, ``train()`` says what to do instead, and
compile measures against the float model in eval mode."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from qcompiler.errors import UnsupportedError

__all__ = ["training_error", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[bool]:
    """``model`` in eval mode inside the block, each module's own flag restored after; yields
    whether any module was training. compile measures the float reference this way: the compiled
    model runs in eval mode, and a reference run with dropout on is not a reference."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False  # not model.eval(): a user's train() override must not run here
        yield any(t for _, t in flags)
    finally:
        for m, t in flags:
            m.training = t


def training_error(what: str) -> UnsupportedError:
    """The error ``train()`` raises on a compiled model or one of its captured regions."""
    return UnsupportedError(
        f"{what} cannot be put in training mode: qcompiler's compiled models run inference only "
        "(their graphs were captured in eval mode, with dropout off, and their weights are stored "
        "quantized, so they have no float parameters to train); eval() and train(False) work",
        hint="to train with quantization in the loop use qat = qcompiler.prepare_qat(model, scheme, "
             "example_inputs=...), train qat as usual, then qcompiler.convert(qat, ...); to fine-tune "
             "the float model, train it before qcompiler.compile")
