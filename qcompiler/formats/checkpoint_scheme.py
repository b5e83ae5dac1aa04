"""The ``checkpoint`` scheme: a model whose quantized weights come from a checkpoint on disk.

    canonicalize-linear,annotate-linears{act=none},checkpoint-weights{source=ckpt0},
    decompose-matmul,share-activation-quant,dce

Used by :func:`qcompiler.formats.load_checkpoint`; nothing is quantized by qcompiler itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.schemes import Scheme, register_scheme

__all__ = ["CheckpointSchemeConfig"]


@dataclass(frozen=True)
class CheckpointSchemeConfig:
    source: str = ""   # the key register_source returned
    format: str = ""   # gptq, awq, compressed-tensors: for the report


def _pipeline(cfg: CheckpointSchemeConfig, calibrated: bool) -> str:
    return (f"canonicalize-linear,annotate-linears{{act=none}},checkpoint-weights{{source={cfg.source}}},"
            f"decompose-matmul,share-activation-quant,dce")


register_scheme(Scheme("checkpoint", CheckpointSchemeConfig, _pipeline,
                       "weights read from a GPTQ / AWQ / compressed-tensors checkpoint (qcompiler.load)"))
