"""The lean loop's causal prompt attention gives what masked attention over the whole static cache
gives - logits and the keys/values written - eagerly and under ``torch.compile``, with grouped KV
heads; it leaves models it does not apply to alone and always restores the attention setting."""

from __future__ import annotations

import inspect

import pytest
import torch

from qcompiler.runtime import DecodeLoop, DecodeLoopConfig, TokenChoice
from qcompiler.runtime.prompt_attention import PROMPT_ATTENTION, causal_prompt_attention, plain_causal_reason


def _prompt_forward(model, ids, fwd=None):
    """One prompt from position 0 into a fresh static cache: logits and the layers' cached keys/values."""
    from transformers import StaticCache
    cache = StaticCache(config=model.config, max_cache_len=64)
    pos = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = (fwd or model.forward)(input_ids=ids, position_ids=pos, use_cache=True, **{key: cache})
    kv = [torch.cat([layer.keys, layer.values]) for layer in cache.layers]
    return out.logits, kv


def _ids(batch=2, seq=40, seed=0):
    return torch.randint(3, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: SDPA's fp16 flash kernels")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_CUDA)])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_equals_masked_attention_over_the_cache(make_tiny_hf, compiled, device):
    model = make_tiny_hf("llama")  # 4 query heads, 2 KV heads: grouped-query attention
    if device == "cuda":  # fp16: SDPA's flash / cuDNN kernels; the masked reference is another kernel
        model = model.half().cuda()
    tol = 1e-5 if device == "cpu" else 4e-3
    ids = _ids().to(device)
    ref_logits, ref_kv = _prompt_forward(model, ids)
    fwd = torch.compile(model.forward, backend="eager", dynamic=True, fullgraph=True) if compiled else None
    with causal_prompt_attention(model, ids.shape[1]) as on:
        assert on and model.config._attn_implementation == PROMPT_ATTENTION
        logits, kv = _prompt_forward(model, ids, fwd)
    assert model.config._attn_implementation == "sdpa"
    err = (logits - ref_logits).abs().max() / ref_logits.abs().max()
    assert err < tol, f"relative logits error {err:.2e}"
    for got, want in zip(kv, ref_kv):  # layer 0's are exact; later layers carry the attention's rounding
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.abs().max().item())
    if compiled:
        torch._dynamo.reset()


def test_not_applied_when_disabled_or_not_sdpa(make_tiny_hf):
    model = make_tiny_hf("llama")
    with causal_prompt_attention(model, 8, enabled=False) as on:
        assert not on and model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with causal_prompt_attention(model, 8) as on:
        assert not on and model.config._attn_implementation == "eager"


def test_setting_restored_after_an_error(make_tiny_hf):
    model = make_tiny_hf("llama")
    with pytest.raises(RuntimeError, match="boom"):
        with causal_prompt_attention(model, 8):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_decode_loop_tokens_same_with_and_without(make_tiny_hf):
    model = make_tiny_hf("llama")
    ids = _ids(batch=2, seq=9, seed=4)
    choice = TokenChoice(eos=(1,), pad=2)
    on = DecodeLoop(model).generate(ids, max_new_tokens=12, choice=choice)
    off = DecodeLoop(model, DecodeLoopConfig(causal_prompt=False)).generate(ids, max_new_tokens=12, choice=choice)
    assert torch.equal(on, off)


def test_more_than_causal_attention_is_left_to_transformers(make_tiny_hf):
    cfg = make_tiny_hf("llama").config
    assert plain_causal_reason(cfg, 40) is None
    cfg.sliding_window = 16
    assert "sliding window of 16" in plain_causal_reason(cfg, 40)
    assert plain_causal_reason(cfg, 16) is None  # a window as long as the prompt is causal
    cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
    assert plain_causal_reason(cfg, 40) is None  # the window is set but no layer uses it
    cfg.layer_types = ["sliding_attention", "full_attention"]
    assert "sliding window" in plain_causal_reason(cfg, 40)
    cfg.sliding_window, cfg.layer_types = None, None
    cfg.attention_chunk_size = 8
    assert plain_causal_reason(cfg, 40) == "chunked attention"
    cfg.attention_chunk_size, cfg.attn_logit_softcapping = None, 50.0
    assert "soft-capping" in plain_causal_reason(cfg, 40)


def _mistral(window):
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            sliding_window=window, bos_token_id=0, eos_token_id=1)).eval()


def _hf_generate(model, ids, new):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                              pad_token_id=2)


def test_sliding_window_shorter_than_the_cache_goes_to_transformers_generate():
    # The loop's decode mask spans the whole cache; transformers keeps window-sized layers for a
    # window shorter than it, so such a request goes to generate() (before: the decode step failed).
    from qcompiler.errors import UnsupportedError
    from qcompiler.runtime import generate_path, install_lean_generate
    model = _mistral(window=8)
    ids = _ids(batch=1, seq=24, seed=5)
    loop = DecodeLoop(model, DecodeLoopConfig(cache_bucket=64))
    assert "sliding window of 8" in loop.request_reason(24, 6)
    with pytest.raises(UnsupportedError, match="sliding window of 8"):
        loop.generate(ids, max_new_tokens=6, choice=TokenChoice(eos=(1,), pad=2))
    ref = _hf_generate(model, ids, 6)
    assert install_lean_generate(model) is None
    with pytest.warns(RuntimeWarning, match="sliding window of 8"):
        out = _hf_generate(model, ids, 6)
    assert torch.equal(out, ref) and generate_path(model).startswith("transformers generate()")


def test_sliding_window_covering_the_cache_runs_in_the_loop():
    model = _mistral(window=64)  # the whole 64-position cache: plain causal attention
    ids = _ids(batch=2, seq=24, seed=6)
    ref = _hf_generate(model, ids, 6)
    loop = DecodeLoop(model, DecodeLoopConfig(cache_bucket=64))
    assert loop.request_reason(24, 6) is None
    assert torch.equal(loop.generate(ids, max_new_tokens=6, choice=TokenChoice(eos=(1,), pad=2)), ref)
