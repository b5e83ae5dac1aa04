"""``from_pretrained(..., quantization_config=QCompilerConfig(...))`` quantizes while loading."""

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler import QCompilerConfig


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1,
                                     tie_word_embeddings=False)).eval()
    d = tmp_path_factory.mktemp("llama")
    m.save_pretrained(d)
    return d, m


def test_from_pretrained_quantizes_while_loading(saved_llama, tmp_path):
    from transformers import AutoModelForCausalLM
    d, float_model = saved_llama
    model = AutoModelForCausalLM.from_pretrained(d, quantization_config=QCompilerConfig("w4-weight-only",
                                                                                        options={"group_size": 32}),
                                                 device_map="cpu")
    assert not any(isinstance(m, nn.Linear) for n, m in model.named_modules() if n.startswith("model.layers.0.mlp"))
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    ref = qcompiler.compile(float_model, "w4-weight-only", example_inputs={"input_ids": ids}, progress=False,
                            group_size=32)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    gen = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(gen, ref.generate(ids, max_new_tokens=6, do_sample=False))
    # save_pretrained writes compressed-tensors: plain from_pretrained loads it back
    model.save_pretrained(tmp_path / "saved")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert back.config.quantization_config.quant_method == "compressed-tensors"
    assert torch.equal(back.generate(ids, max_new_tokens=6, do_sample=False), gen)
    out = qcompiler.save(model, tmp_path / "ct", format="compressed-tensors")  # the same, through qcompiler
    with torch.no_grad():
        torch.testing.assert_close(qcompiler.load(out)(input_ids=ids).logits, model(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_int8_outlier_saves_in_qcompilers_format(saved_llama, tmp_path):
    """int8-outlier has no compressed-tensors form: save_pretrained writes qcompiler's own, which
    plain from_pretrained loads back (tests/integrations/test_saved_dir_in_transformers.py)."""
    from transformers import AutoModelForCausalLM
    d, _ = saved_llama
    model = AutoModelForCausalLM.from_pretrained(d, quantization_config=QCompilerConfig("int8-outlier"),
                                                 device_map="cpu")
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 10)
    model.save_pretrained(tmp_path / "x")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    assert back.config.quantization_config.quant_method == "qcompiler"
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, model(input_ids=ids).logits)
    assert torch.equal(back.generate(ids, max_new_tokens=4, do_sample=False), gen)


def test_calibrated_scheme_needs_data():
    with pytest.raises(qcompiler.ConfigError, match="needs calibration data"):
        QCompilerConfig("w8a8-smoothquant")


def test_options_as_keywords_are_checked():
    assert QCompilerConfig("w4-weight-only", group_size=64).options == {"group_size": 64}
    with pytest.raises(qcompiler.ConfigError, match="no option 'groupsize'"):
        QCompilerConfig("w4-weight-only", groupsize=64)


@pytest.mark.parametrize("scheme,device_map", [("int8-outlier", {"": "cpu"}), ("w4-weight-only", "auto")])
def test_from_pretrained_streams_like_qcompiler_from_pretrained(tied_llama_dir, scheme, device_map):
    """The quantizer runs qcompiler's streaming loader on the checkpoint files (tied embeddings here):
    the same tensors, so bit-identical logits."""
    from transformers import AutoModelForCausalLM
    _, d = tied_llama_dir
    model = AutoModelForCausalLM.from_pretrained(d, quantization_config=QCompilerConfig(scheme), device_map=device_map)
    ref = qcompiler.from_pretrained(d, scheme, dtype=torch.float32, progress=False)
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    assert not [n for n, t in model.state_dict().items() if t.device.type == "meta"]


def test_hub_kernels_are_not_applied_and_the_report_says_so(saved_llama):
    """transformers >= 5.25 kernelizes after loading, while this quantizer's weights are still on
    meta: the load asks for no kernels, says so in the report, and leaves set_use_kernels as it was."""
    from transformers import AutoModelForCausalLM
    d, _ = saved_llama
    model = AutoModelForCausalLM.from_pretrained(d, quantization_config=QCompilerConfig("w4-weight-only"),
                                                 device_map="cpu", use_kernels=True)
    assert not model.use_kernels and "set_use_kernels" not in model.__dict__
    notes = model.__dict__["_qcompiler_model"].report().notes
    assert any("hub kernels (use_kernels) not applied" in n for n in notes), notes
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 9)
