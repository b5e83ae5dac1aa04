"""Bug #9.2: encoder-decoder ``generate()`` reads ``model.encoder.main_input_name`` (and passes
``return_dict=True`` etc. where the captured forward passed nothing); a region must keep both."""

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.capture import RegionModule
from qcompiler.region_attributes import carried_attributes

transformers = pytest.importorskip("transformers", reason="encoder-decoder models come from transformers")

# 4-bit schemes move greedy tokens of a random model; their bound is on the first step's logits.
_FIRST_STEP_BOUND = {"w4-weight-only": 0.5, "nf4": 0.5, "gptq-w4": 0.5, "awq-w4": 0.5}


def _t5():
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                                num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.T5ForConditionalGeneration(cfg).eval()


def _bart():
    torch.manual_seed(0)
    cfg = transformers.BartConfig(vocab_size=128, d_model=32, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, max_position_embeddings=32, pad_token_id=1, bos_token_id=0,
                                  eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
    return transformers.BartForConditionalGeneration(cfg).eval()


def _data():
    g = torch.Generator().manual_seed(0)
    calib = [{"input_ids": torch.randint(3, 128, (2, 8), generator=g),
              "decoder_input_ids": torch.randint(3, 128, (2, 3), generator=g)} for _ in range(2)]
    return calib, torch.randint(3, 128, (2, 8), generator=g)


def _check_generate(model, scheme):
    calib, ids = _data()
    qm = qcompiler.compile(model, scheme, calib, progress=False)
    assert any(r.path.endswith("encoder") for r in qm.program.regions)  # the case that broke
    kw = dict(input_ids=ids, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    ref = model.generate(**kw)
    out = qm.generate(**kw)
    assert out.sequences.shape[0] == 2 and out.sequences.shape[1] <= ref.sequences.shape[1]
    first, ref_first = out.logits[0], ref.logits[0]
    # generate ran the compiled model: its first step is the compiled model's own forward
    start = torch.full((2, 1), model.config.decoder_start_token_id)
    own = qm(input_ids=ids, decoder_input_ids=start).logits[:, -1]
    torch.testing.assert_close(first, own, rtol=1e-4, atol=1e-4)
    rel = ((first - ref_first).norm() / ref_first.norm()).item()
    assert rel < _FIRST_STEP_BOUND.get(scheme, 0.1), rel  # 8-bit: ~0.02 measured
    assert rel > 0  # quantized, not the float model


@pytest.mark.parametrize("scheme", qcompiler.list_schemes())
def test_t5_generate_every_scheme(scheme):
    _check_generate(_t5(), scheme)


def test_bart_generate():
    _check_generate(_bart(), "int8-outlier")


def test_carried_attributes_are_data_only():
    model = _t5()
    carried = carried_attributes(model.encoder, RegionModule)
    assert carried["main_input_name"] == "input_ids"
    assert carried["config"] is model.encoder.config
    assert carried["is_decoder"] is False
    assert "embed_tokens" not in carried and "forward" not in carried and "training" not in carried
    assert not any(isinstance(v, (nn.Module, torch.Tensor)) or callable(v) for v in carried.values())
