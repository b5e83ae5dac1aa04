"""Hugging Face causal LMs (GPT-2, OPT, Llama; tiny random configs) exported whole with
``use_cache=False`` and run in ONNX Runtime: parity with the compiled eager model at two
sequence lengths and batch sizes, with a padding mask."""

from __future__ import annotations

import pytest
import torch

import qcompiler

from onnx_helpers import rel_err, run_ort

# Padding positions are excluded: their rows attend to nothing real and every runtime fills
# them differently. Elsewhere ORT reproduces the int8 codes; a float rounding difference in
# attention or a norm can move one activation across a rounding boundary in a later layer,
# which changes that output by one quantization step: bounded at 1e-3 relative (measured ~1e-7).
PARITY = 1e-3


def _calls(seed: int):
    g = torch.Generator().manual_seed(seed)
    for batch, seq in ((2, 10), (3, 17)):
        ids = torch.randint(3, 256, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, -3:] = 0  # right padding in the first row
        yield ids, mask


@pytest.mark.parametrize("arch,target", [("gpt2", "generic"), ("opt", "ort-cpu"), ("llama", "generic")])
def test_causal_lm_parity(make_tiny_hf, make_token_batches, tmp_path, arch, target):
    qm = qcompiler.compile(make_tiny_hf(arch), "int8-outlier", make_token_batches(2), progress=False)
    example = {"input_ids": torch.randint(3, 256, (1, 7)), "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    out = qcompiler.export_onnx(qm, example, tmp_path / f"{arch}.onnx", target=target)
    assert out.input_names == ["input_ids", "attention_mask"] and out.output_names == ["logits"]
    assert out.call.fixed == {"use_cache": False}
    for ids, mask in _calls(0):
        with torch.no_grad():
            want = qm(input_ids=ids, attention_mask=mask, use_cache=False)
        got = run_ort(out, input_ids=ids, attention_mask=mask)
        assert type(got) is type(want)  # the model's own ModelOutput class
        keep = mask.bool()
        assert rel_err(got.logits[keep], want.logits[keep]) <= PARITY


def test_llama_ort_cuda_target(make_tiny_hf, make_token_batches, tmp_path):
    """The ort-cuda lowering on a decoder: every projection and MLP linear is MatMulNBits."""
    model = make_tiny_hf("llama")
    qm = qcompiler.compile(model, "int8-outlier", make_token_batches(2), progress=False)
    out = qcompiler.export_onnx(qm, {"input_ids": torch.randint(3, 256, (2, 7))}, tmp_path / "llama.onnx",
                                target="ort-cuda")
    assert len(out.lowering) == 15 and all(v.startswith("ort:MatMulNBits(8-bit") for v in out.lowering.values())
    for ids, _ in _calls(1):
        with torch.no_grad():
            ref, scheme = model(input_ids=ids).logits, qm(input_ids=ids).logits
        got = run_ort(out, input_ids=ids).logits
        assert rel_err(got, ref) <= rel_err(scheme, ref)  # weight-only: never less accurate
