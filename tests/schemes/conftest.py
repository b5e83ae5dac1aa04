"""Fixtures for the scheme tests: a two-layer cut of the real MiniLM (real weights, a third of
the capture time), and its fp32 sentence embeddings on the evaluation sentences."""

import copy

import pytest
import torch


@pytest.fixture(scope="session")
def minilm_2l(minilm):
    from qcompiler.models import CALIBRATION_SENTENCES, EVAL_SENTENCES
    model = copy.deepcopy(minilm.model)
    model.encoder.layer = model.encoder.layer[:2]
    model.config.num_hidden_layers = 2
    evals = minilm.encode(EVAL_SENTENCES[:32], 16)
    return {"model": model.eval(), "cal": minilm.encode(CALIBRATION_SENTENCES[:16], 16), "eval": evals,
            "ref": minilm.embed(model, evals), "embed": minilm.embed}


@pytest.fixture(scope="session")
def embedding_cosine(minilm_2l):
    """``embedding_cosine(qm)`` -> per-sentence cosine of ``qm``'s embeddings to the fp32 cut's."""
    def cosine(qm) -> torch.Tensor:
        return (minilm_2l["embed"](qm, minilm_2l["eval"]) * minilm_2l["ref"]).sum(-1)
    return cosine
