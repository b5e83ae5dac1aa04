"""A checkpoint with ``tie_word_embeddings=True`` (save_pretrained writes the embedding only):
from_pretrained loads the head as the embedding's tensor, counts its bytes once, and the saved
model loads back bit for bit."""

import torch

import qcompiler


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_tied_head_streams_like_compile(tied_llama_dir, calib, prompt):
    model, path = tied_llama_dir
    assert model.lm_head.weight is model.model.embed_tokens.weight
    streamed = qcompiler.from_pretrained(path, scheme="int8-outlier", calibration_data=calib, dtype=torch.float32,
                                         calibrate_on="float", progress=False)
    compiled = qcompiler.compile(model, scheme="int8-outlier", calibration_data=calib, progress=False)
    assert torch.equal(_logits(streamed, prompt), _logits(compiled, prompt))
    # the embedding is read from the checkpoint's one copy of the tied tensor
    assert torch.equal(streamed.model.model.embed_tokens.weight, model.model.embed_tokens.weight)
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters(): tied once
    assert streamed.report().memory.bytes_before == float_bytes


def test_tied_head_save_load_bit_exact(tied_llama_dir, prompt, tmp_path):
    _, path = tied_llama_dir
    qm = qcompiler.from_pretrained(path, scheme="w8-weight-only", dtype=torch.float32, progress=False)
    qcompiler.save(qm, tmp_path / "q")
    back = qcompiler.load(tmp_path / "q")
    assert torch.equal(_logits(back, prompt), _logits(qm, prompt))
    assert torch.equal(back.generate(prompt, max_new_tokens=4, do_sample=False),
                       qm.generate(prompt, max_new_tokens=4, do_sample=False))
