"""qcompiler.from_pretrained: block-by-block quantization of a sharded checkpoint equals compile()."""

import copy

import pytest
import torch

import qcompiler


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.double()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# calibrate_on="float" feeds each block the float activations, as compile() calibrates these
# schemes: the result must be the same model, bit for bit.
@pytest.mark.parametrize("scheme", ["int8-outlier", "w8a8-smoothquant", "w4-weight-only"])
def test_equals_compile_bit_for_bit(scheme, llama_dir, calib, prompt):
    model, path = llama_dir
    data = None if scheme == "w4-weight-only" else calib
    ex = prompt if data is None else None
    streamed = qcompiler.from_pretrained(path, scheme=scheme, calibration_data=data, example_inputs=ex,
                                         dtype=torch.float32, calibrate_on="float", progress=False)
    compiled = qcompiler.compile(model, scheme=scheme, calibration_data=data, example_inputs=ex, progress=False)
    assert [r.label for r in streamed.program.regions] == [r.label for r in compiled.program.regions]
    assert torch.equal(_logits(streamed, prompt), _logits(compiled, prompt))
    assert [r.layer for r in streamed.report().layers] == [r.layer for r in compiled.report().layers]


# Sequential schemes calibrate each block on the quantized blocks before it, in both paths; the
# two differ in float rounding only, which GPTQ/AWQ on 48 calibration rows amplify: the streamed
# model must be as close to the float model as the compiled one (within 25%).
@pytest.mark.parametrize("scheme", ["gptq-w4", "awq-w4"])
def test_sequential_schemes_as_accurate_as_compile(scheme, llama_dir, calib, prompt):
    model, path = llama_dir
    streamed = qcompiler.from_pretrained(path, scheme=scheme, calibration_data=calib, dtype=torch.float32,
                                         progress=False)
    compiled = qcompiler.compile(model, scheme=scheme, calibration_data=calib, progress=False)
    ref = _logits(model, prompt)
    e_stream, e_comp = _rel(_logits(streamed, prompt), ref), _rel(_logits(compiled, prompt), ref)
    assert 0 < e_stream <= 1.25 * e_comp + 1e-3, (e_stream, e_comp)
    assert [r.label for r in streamed.program.regions] == [r.label for r in compiled.program.regions]


def test_default_calibrates_on_quantized_activations_within_tolerance(llama_dir, calib, prompt):
    model, path = llama_dir
    streamed = qcompiler.from_pretrained(path, scheme="int8-outlier", calibration_data=calib,
                                         dtype=torch.float32, progress=False)
    compiled = qcompiler.compile(model, scheme="int8-outlier", calibration_data=calib, progress=False)
    ref = _logits(model, prompt)
    # int8 rounding of the activations: the same error budget as compile's, within 25%
    assert _rel(_logits(streamed, prompt), ref) <= 1.25 * _rel(_logits(compiled, prompt), ref) + 1e-4


def test_generate_and_memory_report(llama_dir, calib, prompt):
    model, path = llama_dir
    qm = qcompiler.from_pretrained(path, scheme="int8-outlier", calibration_data=calib, dtype=torch.float32,
                                   calibrate_on="float", progress=False)
    compiled = qcompiler.compile(model, scheme="int8-outlier", calibration_data=calib, progress=False)
    assert torch.equal(qm.generate(prompt, max_new_tokens=5, do_sample=False),
                       compiled.generate(prompt, max_new_tokens=5, do_sample=False))
    mem = qm.report().memory
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # untied: each once
    assert mem.bytes_before == float_bytes
    assert 0 < mem.bytes_after < 0.6 * float_bytes
    assert mem.peak_host_bytes >= mem.host_bytes_at_start > 0
    assert compiled.report().memory.peak_host_bytes > 0


def test_half_precision_on_disk_and_bf16(tmp_path, llama_dir, prompt):
    model, _ = llama_dir
    path = tmp_path / "fp16"
    copy.deepcopy(model).half().save_pretrained(path)  # the session's model stays float32
    qm = qcompiler.from_pretrained(path, scheme="w8-weight-only", dtype=torch.bfloat16, progress=False)
    w = qm.model.model.embed_tokens.weight
    assert w.dtype == torch.bfloat16
    assert torch.equal(w, model.model.embed_tokens.weight.half().to(torch.bfloat16))


def test_bin_checkpoint_weights_only(tmp_path, llama_dir, prompt):
    model, _ = llama_dir
    path = tmp_path / "bin"
    path.mkdir()
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # the pickle format older checkpoints use
    qm = qcompiler.from_pretrained(path, scheme="w4-weight-only", dtype=torch.float32, progress=False)
    ref = qcompiler.compile(model, scheme="w4-weight-only", example_inputs=prompt, progress=False)
    assert torch.equal(_logits(qm, prompt), _logits(ref, prompt))
