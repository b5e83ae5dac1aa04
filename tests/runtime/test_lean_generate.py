"""``generate()`` reaches the lean loop for the requests it supports (settings resolved as
transformers resolves them) and transformers' ``generate()`` for the others, with the reason."""

from __future__ import annotations

import pytest
import torch

import qcompiler
from qcompiler.runtime import FastGenerateConfig, disable_fast_generate, enable_fast_generate, generate_path
from qcompiler.runtime.lean_generate import LeanRequest, plan_lean_request


def _ids(batch=2, seq=6, seed=0):
    return torch.randint(3, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_plan_resolves_settings_like_transformers(make_tiny_hf):
    model = make_tiny_hf("llama")  # generation_config: eos 1, no pad
    plan = plan_lean_request(model, (_ids(),), dict(max_new_tokens=5, min_new_tokens=2))
    assert isinstance(plan, LeanRequest)
    assert (plan.max_new_tokens, plan.min_new_tokens) == (5, 2)
    assert plan.choice.eos == (1,) and plan.choice.pad == 1 and not plan.choice.do_sample  # pad <- eos[0]
    sampled = plan_lean_request(model, (_ids(),), dict(do_sample=True, temperature=0.7, max_length=10))
    assert sampled.max_new_tokens == 4  # max_length counts the prompt
    assert (sampled.choice.top_k, sampled.choice.temperature, sampled.choice.top_p) == (50, 0.7, 1.0)  # HF defaults
    with_min_len = plan_lean_request(model, (_ids(seq=6),), dict(max_new_tokens=9, min_length=10))
    assert with_min_len.min_new_tokens == 4


@pytest.mark.parametrize("kwargs,why", [
    (dict(repetition_penalty=1.3), "repetition_penalty"),
    (dict(num_beams=2), "num_beams"),
    (dict(output_scores=True, return_dict_in_generate=True), "output_scores"),
    (dict(streamer=object()), "streamer"),
    (dict(token_type_ids=torch.zeros(2, 6, dtype=torch.long)), "token_type_ids"),
    (dict(max_new_tokens=0), "max_new_tokens"),  # transformers refuses it: its error is passed on
])
def test_plan_refuses_what_the_loop_does_not_do(kwargs, why, make_tiny_hf):
    plan = plan_lean_request(make_tiny_hf("llama"), (_ids(),), {"max_new_tokens": 4, **kwargs})
    assert isinstance(plan, str) and why in plan


def test_generate_goes_through_the_loop_and_falls_back_visibly(make_tiny_hf, make_token_batches):
    qm = qcompiler.compile(make_tiny_hf("llama"), "w8-weight-only", make_token_batches(n=2), progress=False)
    ids = _ids(seed=3)
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=7, do_sample=False, pad_token_id=2)
    with torch.no_grad():
        ref = qm.generate(ids, **kw)
        note = enable_fast_generate(qm, FastGenerateConfig(all_devices=True, backend="eager"))
        assert "lean decode loop: compiled-cuda-graph step (cuda-graph if compiling fails)" in note
        assert torch.equal(qm.generate(ids, **kw), ref)
        assert generate_path(qm).startswith("lean decode loop (eager, batch 2, greedy)")
        with pytest.warns(RuntimeWarning, match="output_scores"):
            out = qm.generate(ids, **kw, output_scores=True, return_dict_in_generate=True)
        assert torch.equal(out.sequences, ref)  # transformers' generate() with the fast path's static cache
        assert generate_path(qm).startswith("transformers generate(): output_scores")
        torch.manual_seed(0)
        sampled = qm.generate(ids, **{**kw, "do_sample": True, "top_k": 1})  # top-1 sampling is greedy
        assert torch.equal(sampled, ref) and "sampling (top_k=1)" in generate_path(qm)
        assert disable_fast_generate(qm) and "generate" not in qm.model.__dict__ and generate_path(qm) is None
        assert torch.equal(qm.generate(ids, **kw), ref)
    torch._dynamo.reset()
