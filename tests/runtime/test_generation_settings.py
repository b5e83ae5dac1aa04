"""The lean loop's generation settings are remembered per model only while what they come from is
unchanged: every remembered answer equals a fresh resolution through transformers."""

from __future__ import annotations

import copy

import torch

from qcompiler.runtime import generation_settings
from qcompiler.runtime.generation_settings import GenerationSettings, resolve_generation_settings


def _both(model, kwargs, gen_config=None):
    """(remembered, fresh) settings of one call."""
    return (resolve_generation_settings(model, gen_config, dict(kwargs)),
            resolve_generation_settings(model, gen_config, dict(kwargs), memo=False))


def _memo(model) -> dict:
    return generation_settings._MEMO.get(model, {})


def test_remembered_settings_follow_every_change_they_depend_on(make_tiny_hf):
    model = make_tiny_hf("llama")
    greedy = dict(max_new_tokens=5)
    first, fresh = _both(model, greedy)
    assert isinstance(first, GenerationSettings) and first == fresh and not first.choice.do_sample
    assert resolve_generation_settings(model, None, dict(greedy)) is first  # the memo answered
    # The model's generation config changes: the next call resolves again.
    model.generation_config.do_sample, model.generation_config.top_k = True, 7
    sampled, fresh = _both(model, greedy)
    assert sampled == fresh and sampled.choice.do_sample and sampled.choice.top_k == 7
    model.generation_config.eos_token_id = [5, 6]
    eos, fresh = _both(model, greedy)
    assert eos == fresh and eos.choice.eos == (5, 6) and eos.pad_token_id == 5
    # A call's own values, a generation_config argument and its later mutation.
    other, fresh = _both(model, dict(max_new_tokens=9, temperature=0.5))
    assert other == fresh and other.max_new_tokens == 9 and other.choice.temperature == 0.5
    gc = copy.deepcopy(model.generation_config)
    gc.do_sample = False
    arg, fresh = _both(model, greedy, gc)
    assert arg == fresh and not arg.choice.do_sample
    gc.max_new_tokens, gc.repetition_penalty = 3, 1.5
    refused, fresh = _both(model, {}, gc)
    assert refused == fresh and isinstance(refused, str) and "repetition_penalty" in refused


def test_a_generation_setting_on_the_model_config_is_refused_as_transformers_refuses_it(make_tiny_hf):
    model = make_tiny_hf("llama")
    ok, _ = _both(model, dict(max_new_tokens=4))
    assert isinstance(ok, GenerationSettings)
    model.config.max_length = 30  # transformers raises for generation settings kept in model.config
    refused, fresh = _both(model, dict(max_new_tokens=4))
    assert refused == fresh and isinstance(refused, str) and "could not resolve" in refused


def test_tensor_arguments_count_by_name_and_unfreezable_settings_are_never_remembered(make_tiny_hf):
    model = make_tiny_hf("llama")
    ids = torch.ones(1, 4, dtype=torch.long)
    resolve_generation_settings(model, None, dict(max_new_tokens=2, attention_mask=ids))
    resolve_generation_settings(model, None, dict(max_new_tokens=2, attention_mask=ids * 0))
    assert len(_memo(model)) == 1  # the mask's values do not change the settings
    before = len(_memo(model))
    tensor_eos, fresh = _both(model, dict(max_new_tokens=2, eos_token_id=torch.tensor([7])))
    assert tensor_eos == fresh and tensor_eos.choice.eos == (7,)
    assert len(_memo(model)) == before  # no frozen value for a tensor setting: resolved each time
    not_a_config, fresh = _both(model, {}, {"max_new_tokens": 3})  # transformers' own error, not the memo's
    assert not_a_config == fresh and isinstance(not_a_config, str) and "could not resolve" in not_a_config


def test_the_memo_is_bounded(make_tiny_hf):
    model = make_tiny_hf("llama")
    for n in range(1, generation_settings._MEMO_SIZE + 10):
        settings = resolve_generation_settings(model, None, dict(max_new_tokens=n))
        assert settings.max_new_tokens == n
    assert len(_memo(model)) == generation_settings._MEMO_SIZE


def test_the_fast_paths_compile_config_does_not_turn_the_memo_off(make_tiny_hf, monkeypatch):
    # enable_fast_generate puts a CompileConfig (a dataclass) on model.generation_config: it is
    # part of the key by value, so a fast-path model is remembered and a change is still seen.
    from qcompiler.runtime import FastGenerateConfig, enable_fast_generate
    model = make_tiny_hf("llama")
    enable_fast_generate(model, FastGenerateConfig(all_devices=True, backend="eager"))
    calls = []
    real = generation_settings._resolve
    monkeypatch.setattr(generation_settings, "_resolve", lambda *a: calls.append(1) or real(*a))
    kwargs = dict(max_new_tokens=3, attention_mask=torch.ones(1, 4, dtype=torch.long))
    first = resolve_generation_settings(model, None, dict(kwargs))
    assert resolve_generation_settings(model, None, dict(kwargs)) is first and len(calls) == 1
    model.generation_config.compile_config.fullgraph = False
    again, fresh = _both(model, kwargs)
    assert len(calls) == 3 and again == fresh  # the key changed: resolved again (then the memo=False call)
