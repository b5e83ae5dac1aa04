"""Hugging Face causal LMs (GPT-2, OPT, Llama; tiny random configs) exported whole with
``use_cache=False`` and run in ONNX Runtime, one target each: parity with the compiled eager
model at two sequence lengths and batch sizes, with a padding mask."""

from __future__ import annotations

import pytest
import torch

import qcompiler
from qcompiler.backends.onnxruntime import lowered_view

from onnx_helpers import rel_err, run_ort

# Padding positions are excluded: their rows attend to nothing real and every runtime fills
# them differently. Elsewhere ORT computes the same int8 codes; float rounding in attention or
# a norm can move an activation across a rounding boundary in the next layer, changing that
# output by one quantization step: bounded at 1e-3 relative (measured ~1e-7 on these models).
PARITY = 1e-3


def _calls(seed: int):
    g = torch.Generator().manual_seed(seed)
    for batch, seq in ((2, 10), (3, 17)):
        ids = torch.randint(3, 256, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, -3:] = 0  # right padding in the first row
        yield ids, mask


@pytest.mark.parametrize("arch,target", [("gpt2", "generic"), ("opt", "ort-cpu"), ("llama", "ort-cuda")])
def test_causal_lm(make_tiny_hf, make_token_batches, tmp_path, arch, target):
    model = make_tiny_hf(arch)
    qm = qcompiler.compile(model, "int8-outlier", make_token_batches(2), progress=False)
    example = {"input_ids": torch.randint(3, 256, (1, 7)), "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    out = qcompiler.export_onnx(qm, example, tmp_path / f"{arch}.onnx", target=target)
    assert out.input_names == ["input_ids", "attention_mask"] and out.output_names == ["logits"]
    assert out.call.fixed == {"use_cache": False}  # the KV cache stays out of the graph
    n_linear = {"gpt2": 9, "opt": 13, "llama": 15}[arch]  # 4 or 6 or 7 per block, x2, + lm_head
    assert len(out.lowering) == n_linear
    for ids, mask in _calls(0):
        with torch.no_grad(), lowered_view(qm, target, example):  # what the file computes, eagerly
            want = qm(input_ids=ids, attention_mask=mask, use_cache=False)
        got = run_ort(out, input_ids=ids, attention_mask=mask)
        assert type(got) is type(want)  # the model's own ModelOutput class
        keep = mask.bool()
        assert rel_err(got.logits[keep], want.logits[keep]) <= PARITY
        if target == "ort-cuda":  # weight-only on the scheme's weights: never less accurate
            with torch.no_grad():
                ref = model(input_ids=ids, attention_mask=mask).logits[keep]
                scheme = qm(input_ids=ids, attention_mask=mask, use_cache=False).logits[keep]
            assert rel_err(got.logits[keep], ref) <= rel_err(scheme, ref)
