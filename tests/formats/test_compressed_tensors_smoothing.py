"""compressed-tensors exports of the smoothing schemes: w8a8-smoothquant and awq-w4 with its
scale search, on a region-captured Llama whose scales fold into the RMSNorms (smooth="foldable")."""

import json

import pytest
import torch
from safetensors.torch import load_file

import qcompiler
from qcompiler.formats import ExportFormatError

from checkpoint_helpers import tiny_llama

CAL = [{"input_ids": torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(i))} for i in range(2)]


@pytest.fixture(scope="module")
def llama():
    model = tiny_llama()
    with torch.no_grad():  # outlier channels in the residual stream: the case smoothing is for
        for layer in model.model.layers:
            layer.input_layernorm.weight[[3, 17, 40]] = 8.0
    return model


def _config(out):
    return json.loads((out / "config.json").read_text())["quantization_config"]


def _norms_written_folded(out, qm, llama):
    """The export holds the norms qcompiler's model runs (w / s), not the float model's."""
    sd = load_file(str(out / "model.safetensors"))
    name = "model.layers.0.input_layernorm.weight"
    torch.testing.assert_close(sd[name].float(), dict(qm.model.named_parameters())[name].float(), rtol=0, atol=0)
    assert not torch.allclose(sd[name], dict(llama.named_parameters())[name])


def test_w8a8_smoothquant_exports_and_loads_in_transformers(tmp_path, llama, ids):
    from transformers import AutoModelForCausalLM
    qm = qcompiler.compile(llama, "w8a8-smoothquant", CAL, progress=False, smooth="foldable")
    out = qcompiler.save(qm, tmp_path / "ct", format="compressed-tensors", float_layers=())
    cfg = _config(out)
    assert cfg["format"] == "int-quantized"
    acts = cfg["config_groups"]["group_0"]["input_activations"]
    assert acts["dynamic"] is True and acts["strategy"] == "token" and acts["num_bits"] == 8
    _norms_written_folded(out, qm, llama)
    hf = AutoModelForCausalLM.from_pretrained(out)
    back = qcompiler.load(out)
    with torch.no_grad():
        want = qm(input_ids=ids).logits
        got_hf, got_back = hf(input_ids=ids).logits, back(input_ids=ids).logits
    # transformers runs the decompressed int8 weights on float activations (qcompiler: int8 ones);
    # measured 0.015, the same size as qcompiler's own error vs the float model
    assert ((got_hf - want).norm() / want.norm()) < 0.05
    torch.testing.assert_close(got_back, want, rtol=1e-4, atol=1e-4)  # same int8 weights, same int8 ops


def test_awq_w4_symmetric_searched_loads_in_transformers(tmp_path, llama, ids):
    from transformers import AutoModelForCausalLM
    qm = qcompiler.compile(llama, "awq-w4", CAL, progress=False, group_size=32, symmetric=True)
    assert any("alpha=0.00" not in n for r in qm.report().layers for n in r.notes if n.startswith("awq: alpha="))
    out = qcompiler.save(qm, tmp_path / "ct", format="compressed-tensors", float_layers=())
    assert _config(out)["format"] == "pack-quantized"
    _norms_written_folded(out, qm, llama)
    hf = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        # the same dequantized weights and folded norms: equal up to float32 summation order
        torch.testing.assert_close(hf(input_ids=ids).logits, qm(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    gen = qm.generate(ids[:1, :4], max_new_tokens=8, do_sample=False)
    assert torch.equal(hf.generate(ids[:1, :4], max_new_tokens=8, do_sample=False), gen)


def _library_float_model(out, config):
    """A float Llama holding compressed-tensors' own decompression of every layer in ``out``."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_config(config).eval()
    qconf = QuantizationConfig.model_validate(_config(out))
    schemed = AutoModelForCausalLM.from_config(config)
    apply_quantization_config(schemed, qconf, show_progress=False)
    sd = load_file(str(out / "model.safetensors"))
    state, n = {}, 0
    for name, mod in schemed.named_modules():
        scheme = getattr(mod, "quantization_scheme", None)
        if scheme is None:
            continue
        local = {k.removeprefix(name + "."): v for k, v in sd.items() if k.startswith(name + ".")}
        state[f"{name}.weight"] = PackedQuantizationCompressor.decompress(local, scheme)["weight"].float()
        n += 1
    state.update({k: v for k, v in sd.items() if k in dict(model.state_dict()) and k not in state})
    model.load_state_dict(state, strict=True)
    return model, n


def test_awq_w4_asymmetric_searched_matches_library_decompression(tmp_path, llama, ids):
    from transformers import AutoModelForCausalLM
    qm = qcompiler.compile(llama, "awq-w4", CAL, progress=False, group_size=32)  # zero points (AWQ's default)
    out = qcompiler.save(qm, tmp_path / "ct", format="compressed-tensors", float_layers=())
    assert _config(out)["config_groups"]["group_0"]["weights"]["symmetric"] is False
    _norms_written_folded(out, qm, llama)
    ref, n = _library_float_model(out, llama.config)
    assert n == 15  # every linear, lm_head included
    back = qcompiler.load(out)
    with torch.no_grad():
        want = qm(input_ids=ids).logits
        torch.testing.assert_close(ref(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(back(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
    try:  # compressed-tensors 0.20.1 + transformers 5.24: packed zero points reported as a size mismatch
        hf = AutoModelForCausalLM.from_pretrained(out)
    except RuntimeError as e:
        assert "weight_zero_point" in str(e) or "mismatch" in str(e).lower(), e
        print("transformers does not load asymmetric pack-quantized (known compressed-tensors bug):",
              str(e).splitlines()[0][:120])
        return
    with torch.no_grad():  # once fixed upstream, it must agree too
        torch.testing.assert_close(hf(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)


def test_smooth_all_is_refused_naming_the_unfolded_layer(tmp_path, llama):
    qm = qcompiler.compile(llama, "awq-w4", CAL, progress=False, group_size=32, smooth="all", n_grid=4)
    with pytest.raises(ExportFormatError, match=r"(?s)(o_proj|lm_head).*explicit x \* \(1/s\).*smooth='foldable'"):
        qcompiler.save(qm, tmp_path / "x", format="compressed-tensors")


def test_awq_w4_asymmetric_unpacked_layout_loads_in_transformers(tmp_path, llama, ids):
    """packed=False (int-quantized: one int8 per code) sidesteps the packed zero-point bug."""
    from transformers import AutoModelForCausalLM
    qm = qcompiler.compile(llama, "awq-w4", CAL, progress=False, group_size=32)
    out = qcompiler.save(qm, tmp_path / "ct", format="compressed-tensors", float_layers=(), packed=False)
    cfg = _config(out)
    assert cfg["format"] == "int-quantized" and cfg["config_groups"]["group_0"]["weights"]["symmetric"] is False
    sd = load_file(str(out / "model.safetensors"))
    assert sd["model.layers.0.self_attn.q_proj.weight"].dtype == torch.int8
    assert int(sd["model.layers.0.self_attn.q_proj.weight"].abs().max()) <= 8  # int4 codes, signed
    hf = AutoModelForCausalLM.from_pretrained(out)
    back = qcompiler.load(out)
    with torch.no_grad():
        want = qm(input_ids=ids).logits
        torch.testing.assert_close(hf(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(back(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
