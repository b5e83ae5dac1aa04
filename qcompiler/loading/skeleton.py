"""A model with no weights yet: built from config.json on the ``meta`` device, filled in part by part.

The skeleton is a real ``transformers`` model (its class named by ``config.architectures``, looked
up in the ``transformers`` package only) built under ``accelerate.init_empty_weights``: parameters
on ``meta``, computed buffers (rotary frequencies) real. :func:`materialize` then gives a set of
its tensors their values, tied ones (``lm_head.weight is embed_tokens.weight``) together.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from qcompiler.loading.errors import CheckpointError, CheckpointMismatchError

__all__ = ["build_skeleton", "find_blocks", "TensorSlots", "materialize", "meta_tensors"]


def _read_config(path: Path):
    from transformers import AutoConfig

    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist", hint="give a directory written by save_pretrained "
                                                             "(config.json + weights)")
    try:
        return AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} cannot be read as a transformers config: {e}") from None


def build_skeleton(path: str | os.PathLike, dtype: torch.dtype, config=None) -> nn.Module:
    """The model of ``path/config.json`` on ``meta`` (float parameters in ``dtype``), in eval mode."""
    import transformers
    from accelerate import init_empty_weights

    config = config if config is not None else _read_config(Path(path))
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = None
    with init_empty_weights(include_buffers=False):
        if cls is not None:
            model = cls._from_config(config, dtype=dtype)
        else:
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    # built on meta, the head is not yet the embedding's tensor (transformers ties at load time):
    # tie now, so TensorSlots sees one tensor under both names and the checkpoint needs it once
    model.tie_weights()
    return model.eval()


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's list of repeated blocks (``model.layers``): a ModuleList of the classes the model
    names in ``_no_split_modules``, else the longest ModuleList of one class."""
    wanted = set(getattr(model, "_no_split_modules", None) or [])
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or not len(mod):
            continue
        kinds = {type(m).__name__ for m in mod}
        if len(kinds) != 1:
            continue
        if kinds & wanted:
            return name, mod
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    return best


class TensorSlots:
    """Every parameter and persistent buffer of a model by name, tied names grouped: ``groups[k]``
    lists all names that are the same tensor as ``k`` (``k`` is the first name state_dict uses)."""

    def __init__(self, model: nn.Module):
        self.model = model
        by_id: dict[int, list[str]] = {}
        self.kind: dict[str, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            by_id.setdefault(id(p), []).append(name)
            self.kind[name] = "parameter"
        for mod_name, mod in model.named_modules(remove_duplicate=False):
            for n, b in mod._buffers.items():
                if b is not None and n not in mod._non_persistent_buffers_set:
                    name = f"{mod_name}.{n}" if mod_name else n
                    by_id.setdefault(id(b), []).append(name)
                    self.kind[name] = "buffer"
        self.groups = {names[0]: names for names in by_id.values()}
        self.owner = {n: names[0] for names in by_id.values() for n in names}

    def tensor(self, name: str) -> torch.Tensor:
        owner_path, _, attr = name.rpartition(".")
        owner = self.model.get_submodule(owner_path) if owner_path else self.model
        return owner._parameters[attr] if self.kind[name] == "parameter" else owner._buffers[attr]

    def check_against(self, reader) -> None:
        """Every tensor the model needs is in the checkpoint, with the same shape: else the first
        one that is not, named with its file."""
        for key, names in self.groups.items():
            stored = next((n for n in names if n in reader), None)
            want = tuple(self.tensor(key).shape)
            if stored is None:
                raise CheckpointMismatchError(
                    f"the checkpoint {reader.root} has no tensor {key!r}"
                    + (f" (nor its ties {names[1:]})" if len(names) > 1 else "") + ", which config.json's model needs",
                    hint="config.json and the weights come from different models")
            if tuple(reader.shape(stored)) != want:
                raise CheckpointMismatchError(
                    f"tensor {stored!r} in {reader.file(stored).name} is {list(reader.shape(stored))}, config.json's "
                    f"model wants {list(want)}", hint="config.json and the weights come from different models")

    def stored_name(self, key: str, reader) -> str:
        return next(n for n in self.groups[key] if n in reader)


def _assign(model: nn.Module, name: str, t: torch.Tensor, kind: str) -> None:
    owner_path, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    if kind == "parameter":
        owner._parameters[attr] = t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)
    else:
        owner._buffers[attr] = t


def materialize(slots: TensorSlots, keys: list[str], get: Callable[[str], torch.Tensor]) -> int:
    """Gives the tensors ``keys`` (group keys of ``slots``) their values ``get(key)``, under every
    tied name; returns the bytes placed."""
    total = 0
    for key in keys:
        t = get(key)
        kind = slots.kind[key]
        value = nn.Parameter(t, requires_grad=False) if kind == "parameter" else t
        for name in slots.groups[key]:
            _assign(slots.model, name, value, kind)
        total += t.numel() * t.element_size()
    return total


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of the tensors still on ``meta``."""
    return [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
