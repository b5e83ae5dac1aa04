"""``model.generate(...)`` through the lean decode loop when the request is one it supports.

:func:`install_lean_generate` puts a ``generate`` on a Hugging Face model (what
``qm.generate`` reaches) that resolves the call's generation settings exactly as transformers does
(``model._prepare_generation_config``: the call's kwargs over ``model.generation_config`` over
the global defaults), and then

* runs :class:`qcompiler.runtime.decode_loop.DecodeLoop` when every setting is one the loop
  implements - greedy or sampling (temperature, top-k, top-p), ``max_new_tokens`` /
  ``max_length``, ``min_new_tokens`` / ``min_length``, end-of-sequence and padding ids, a batch
  with an ``attention_mask`` (left padding) - and every other setting has its default;
* otherwise calls transformers' ``generate()`` (with whatever the fast path set up) and says why:
  a ``RuntimeWarning`` the first time each reason occurs, and :func:`generate_path` names the path
  the last call took. Tokens never silently differ from ``generate()``'s.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from qcompiler.runtime.decode_loop import DecodeLoop, DecodeLoopConfig
from qcompiler.runtime.generation_settings import resolve_generation_settings
from qcompiler.runtime.next_token import TokenChoice

__all__ = ["LeanRequest", "plan_lean_request", "install_lean_generate", "uninstall_lean_generate", "generate_path"]

_LOOP = "_qcompiler_lean_decode"  # attribute on the HF model: the DecodeLoop, the original generate, the last path

# generate()'s own arguments besides the generation settings: the loop runs only when they are unset.
_HOOKS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
          "streamer", "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate")


@dataclass(frozen=True)
class LeanRequest:
    """A ``generate()`` call the loop runs: prompt, mask, lengths and how tokens are chosen."""

    input_ids: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    max_new_tokens: int
    min_new_tokens: int
    choice: TokenChoice


def _mask_for(ids: torch.Tensor, pad: Optional[int], eos: tuple[int, ...]) -> Optional[torch.Tensor]:
    """generate()'s mask when none is given: from the padding id if the prompt holds it and it is no eos id."""
    if pad is None or pad in eos or not bool((ids == pad).any()):
        return None
    return ids.ne(pad).long()


def plan_lean_request(hf: nn.Module, args: tuple, kwargs: dict) -> Union[LeanRequest, str]:
    """The request the loop would run for ``hf.generate(*args, **kwargs)``, or why it cannot."""
    kwargs = dict(kwargs)
    if len(args) > 2:
        return "positional arguments after generation_config"
    ids = args[0] if args else kwargs.pop("inputs", None)
    ids = kwargs.pop("input_ids", None) if ids is None else ids
    gen_config = args[1] if len(args) > 1 else kwargs.pop("generation_config", None)
    for hook in _HOOKS:
        if kwargs.pop(hook, None) not in (None, False, [], ()):
            return f"{hook} is given"
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.long, torch.int) or not ids.numel():
        return "the prompt is not a [batch, length] tensor of token ids (inputs_embeds or none)"
    settings = resolve_generation_settings(hf, gen_config, kwargs)
    if isinstance(settings, str):
        return settings
    prompt = ids.shape[1]
    new = settings.new_tokens(prompt)
    if new < 1:
        return (f"no new tokens to generate (max_new_tokens={settings.max_new_tokens}, "
                f"max_length={settings.max_length})")
    choice = settings.choice
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = _mask_for(ids, settings.pad_token_id, choice.eos)
    elif not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
        return "attention_mask is not a 2D mask of the prompt's shape"
    min_new = settings.min_new(prompt)
    return LeanRequest(ids, mask, int(new), int(min_new), choice)


def install_lean_generate(hf: nn.Module, config: DecodeLoopConfig = DecodeLoopConfig()) -> Optional[str]:
    """Route ``hf.generate`` through the lean loop where it applies; returns why it cannot be
    installed at all (then nothing changed), or None."""
    uninstall_lean_generate(hf)
    loop = DecodeLoop(hf, config)
    why = loop.unsupported_reason()
    if why is not None:
        return why
    original = hf.generate  # the bound method of the class, or the instance attribute already set
    state = {"loop": loop, "original": original, "path": None, "warned": set(), "own": "generate" in hf.__dict__}

    def generate(*args, **kwargs):
        plan = plan_lean_request(hf, args, kwargs)
        device = next(hf.parameters()).device
        if isinstance(plan, LeanRequest) and plan.input_ids.device != device:
            plan = f"the prompt is on {plan.input_ids.device}, the model on {device}"
        if isinstance(plan, LeanRequest):
            plan = loop.request_reason(plan.input_ids.shape[1], plan.max_new_tokens) or plan
        if isinstance(plan, str):
            state["path"] = f"transformers generate(): {plan}"
            if plan not in state["warned"]:
                state["warned"].add(plan)
                warnings.warn(f"qcompiler: this generate() call runs through transformers' generate(), not the lean "
                              f"decode loop: {plan}", RuntimeWarning, stacklevel=2)
            return original(*args, **kwargs)
        out = loop.generate(plan.input_ids, plan.attention_mask, max_new_tokens=plan.max_new_tokens,
                            choice=plan.choice, min_new_tokens=plan.min_new_tokens)
        state["path"] = (f"lean decode loop ({loop.last_mode.value}, batch {plan.input_ids.shape[0]}, "
                         f"{plan.choice.describe()})")
        return out

    generate.__wrapped__ = original
    hf.generate = generate
    setattr(hf, _LOOP, state)
    return None


def uninstall_lean_generate(hf: nn.Module) -> bool:
    """Undo :func:`install_lean_generate`; True if it had been installed."""
    state = hf.__dict__.pop(_LOOP, None)
    if state is None:
        return False
    if state["own"]:
        hf.generate = state["original"]
    else:
        hf.__dict__.pop("generate", None)
    return True


def generate_path(model: nn.Module) -> Optional[str]:
    """What the last ``generate()`` call of ``model`` (HF model or QuantizedModel) ran: ``"lean
    decode loop (...)"`` or ``"transformers generate(): <why>"``; None if the loop is not installed
    or generate() was not called yet."""
    hf = model._modules["model"] if hasattr(model, "program") else model
    state = hf.__dict__.get(_LOOP)
    return state["path"] if state is not None else None
