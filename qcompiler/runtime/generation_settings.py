"""What a ``generate()`` call's settings mean for the lean decode loop, resolved as transformers
resolves them, and remembered per model while nothing they come from changes.

:func:`resolve_generation_settings` runs ``model._prepare_generation_config`` (the call's kwargs
over ``model.generation_config`` over the global defaults; a ``model.config`` that carries
generation parameters makes transformers raise) and keeps what the loop needs
(:class:`GenerationSettings`), or the reason the loop cannot run the call. That resolution
deep-copies and merges the generation config: ~0.45 ms of host time per call on a 2-core CPU,
most of what ``generate()`` costs besides the forward when a prompt replays as one CUDA graph. So
the result is remembered under a key made of everything it reads: the call's non-tensor
arguments, the names of its tensor arguments, snapshots of the ``__dict__`` of
``model.generation_config`` and of a ``generation_config`` argument, and the generation-setting
names as ``model.config`` holds them (what transformers checks there); ~20 us in all.
Change any of them (``model.generation_config.do_sample = True``, a new ``eos_token_id``) and the
next call resolves again. Dataclass values (the ``CompileConfig`` the fast path sets) are frozen by
their fields; a value the snapshot cannot freeze (a tensor setting, another object) means no memo
for that call: it is resolved every time, as before (on the H200's host, 1.4-2.2 ms a call).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from qcompiler.runtime.next_token import TokenChoice

__all__ = ["GenerationSettings", "resolve_generation_settings"]

_HANDLED = {"max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "temperature", "top_k",
            "top_p", "pad_token_id", "bos_token_id", "eos_token_id"}
# Settings that do not change greedy / sampled tokens (cache and compile plumbing, beam-only,
# assistant-only knobs, bookkeeping).
_NO_EFFECT = {"use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config",
              "disable_compile", "early_stopping", "length_penalty", "num_assistant_tokens",
              "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind",
              "target_lookbehind", "max_matching_ngram_size", "low_memory", "transformers_version",
              "_from_model_config", "decoder_start_token_id", "continuous_batching_config"}

_MEMO_SIZE = 32  # remembered settings per model (distinct argument sets)
_MEMO: "weakref.WeakKeyDictionary[nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class GenerationSettings:
    """The resolved settings of a call the loop can run; lengths still relative to the prompt."""

    max_new_tokens: Optional[int]
    max_length: Optional[int]
    min_new_tokens: Optional[int]
    min_length: Optional[int]
    choice: TokenChoice
    pad_token_id: Optional[int]  # generate()'s padding id (None: none, and no eos id either)

    def new_tokens(self, prompt: int) -> int:
        return self.max_new_tokens if self.max_new_tokens is not None else (self.max_length or 0) - prompt

    def min_new(self, prompt: int) -> int:
        return max(self.min_new_tokens or 0, (self.min_length or 0) - prompt)


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, torch.Tensor):
        return tuple(int(v) for v in value.flatten().tolist())
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


class _Unfrozen(Exception):
    """A value the memo key cannot hold by value."""


def _frozen(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # the fast path's CompileConfig
        return (type(value).__qualname__, _frozen(vars(value)))
    raise _Unfrozen(type(value).__name__)


def _config_snapshot(config: Any) -> Any:
    if config is None:
        return None
    return tuple((k, _frozen(v)) for k, v in vars(config).items())


_SETTING_NAMES: set[str] = set()  # GenerationConfig's attributes (filled on first use)


def _setting_names() -> set[str]:
    if not _SETTING_NAMES:
        from transformers import GenerationConfig
        _SETTING_NAMES.update(vars(GenerationConfig()))
    return _SETTING_NAMES


def _memo_key(hf: nn.Module, gen_config: Any, kwargs: dict) -> Optional[tuple]:
    """Everything resolving these settings reads, by value; None if some of it cannot be frozen.
    A tensor that is a model argument (``attention_mask``) counts by name: only its presence
    matters here. A tensor given as a setting has no frozen value: no memo."""
    names = _setting_names()
    try:
        args = tuple(sorted((k, ("<tensor>",) if isinstance(v, torch.Tensor) and k not in names else _frozen(v))
                            for k, v in kwargs.items()))
        held = getattr(getattr(hf, "config", None), "__dict__", {})  # getattr on a config: ~3 us a miss
        model_config = tuple(_frozen(held.get(k)) for k in sorted(names))  # what transformers checks there
        return (args, _config_snapshot(gen_config), _config_snapshot(getattr(hf, "generation_config", None)),
                model_config)
    except (_Unfrozen, TypeError):  # TypeError: a generation_config without a __dict__ (transformers says why)
        return None


def _resolve(hf: nn.Module, gen_config: Any, kwargs: dict) -> Union[GenerationSettings, str]:
    try:
        gc, model_kwargs = hf._prepare_generation_config(gen_config, **kwargs)
    except Exception as e:  # noqa: BLE001 - generate() itself will raise what it raises
        return f"transformers could not resolve the generation settings ({type(e).__name__}: {e})"
    model_kwargs.pop("attention_mask", None)  # the call's own tensor: the caller reads it from kwargs
    model_kwargs.pop("use_cache", None)
    if model_kwargs:
        return f"model argument(s) {sorted(model_kwargs)} (the loop passes only the prompt and its mask)"
    defaults = gc._get_default_generation_params()
    for key, value in gc.to_dict().items():
        if key in _HANDLED or key in _NO_EFFECT or value is None or value is False:
            continue
        if key in defaults and value == defaults[key]:
            continue
        return f"{key}={value!r} (the loop implements greedy / sampling with temperature, top_k, top_p)"
    if gc.use_cache is False:
        return "use_cache=False"
    eos = _ids(gc.eos_token_id)
    pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else None)  # generate()'s choice
    top_k = int(gc.top_k or 0)
    choice = TokenChoice(do_sample=bool(gc.do_sample), temperature=float(gc.temperature or 1.0) if gc.do_sample else 1.0,
                         top_k=top_k if gc.do_sample else 0, top_p=float(gc.top_p or 1.0) if gc.do_sample else 1.0,
                         eos=eos, pad=int(pad) if pad is not None else 0)
    return GenerationSettings(gc.max_new_tokens, gc.max_length, gc.min_new_tokens, gc.min_length, choice,
                              int(pad) if pad is not None else None)


def resolve_generation_settings(hf: nn.Module, gen_config: Any, kwargs: dict, *,
                                memo: bool = True) -> Union[GenerationSettings, str]:
    """The settings of ``hf.generate(generation_config=gen_config, **kwargs)`` (the prompt and
    generate()'s hook arguments already taken out), or why the loop cannot run them."""
    key = _memo_key(hf, gen_config, kwargs) if memo else None
    if key is None:
        return _resolve(hf, gen_config, kwargs)
    try:
        table = _MEMO.setdefault(hf, OrderedDict())
    except TypeError:  # not weak-referenceable
        return _resolve(hf, gen_config, kwargs)
    if key in table:
        table.move_to_end(key)
        return table[key]
    settings = table[key] = _resolve(hf, gen_config, kwargs)
    while len(table) > _MEMO_SIZE:
        table.popitem(last=False)
    return settings
