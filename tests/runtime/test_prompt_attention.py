"""The lean loop's causal prompt attention gives what masked attention over the whole static cache
gives - logits and the keys/values written - eagerly and under ``torch.compile``, with grouped KV
heads; it leaves models it does not apply to alone and always restores the attention setting."""

from __future__ import annotations

import inspect

import pytest
import torch

from qcompiler.runtime import DecodeLoop, DecodeLoopConfig, TokenChoice
from qcompiler.runtime.prompt_attention import PROMPT_ATTENTION, causal_prompt_attention


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
    with causal_prompt_attention(model) as on:
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
    with causal_prompt_attention(model, enabled=False) as on:
        assert not on and model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with causal_prompt_attention(model) as on:
        assert not on and model.config._attn_implementation == "eager"


def test_setting_restored_after_an_error(make_tiny_hf):
    model = make_tiny_hf("llama")
    with pytest.raises(RuntimeError, match="boom"):
        with causal_prompt_attention(model):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_decode_loop_tokens_same_with_and_without(make_tiny_hf):
    model = make_tiny_hf("llama")
    ids = _ids(batch=2, seq=9, seed=4)
    choice = TokenChoice(eos=(1,), pad=2)
    on = DecodeLoop(model).generate(ids, max_new_tokens=12, choice=choice)
    off = DecodeLoop(model, DecodeLoopConfig(causal_prompt=False)).generate(ids, max_new_tokens=12, choice=choice)
    assert torch.equal(on, off)
