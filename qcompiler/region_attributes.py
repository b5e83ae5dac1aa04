"""What a captured region keeps of the module it replaces, besides its call signature.

Callers read plain attributes of Hugging Face submodules: ``generate()`` on an encoder-decoder
reads ``model.encoder.main_input_name``, other code reads ``.config`` or ``.is_decoder``. A
:class:`~qcompiler.capture.RegionModule` copies those at construction (so its ``forward`` pays
nothing for them): the original's public instance attributes and its classes' public class
attributes that are plain data. Methods and properties are not carried over: bound to the region
they would read submodules it no longer has, or write where nothing reads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

__all__ = ["carried_attributes", "implied_constants", "same_constants"]


def _is_data(value: Any) -> bool:
    """A value the region can hold without holding the original's weights or behaviour."""
    if isinstance(value, (nn.Module, torch.Tensor)) or callable(value) or hasattr(type(value), "__get__"):
        return False
    return not any(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(value)[0])


def carried_attributes(original: nn.Module, region_type: type) -> dict[str, Any]:
    """``{name: value}`` to set on the region standing in for ``original`` (see the module doc).

    Names the region class already defines (``forward``, ``path``, ...) and ``nn.Module``'s own
    state (``training``, hooks) are never carried.
    """
    out: dict[str, Any] = {}
    for cls in reversed(type(original).__mro__):  # subclasses override their bases' values
        if cls in nn.Module.__mro__:
            continue
        out.update((k, v) for k, v in vars(cls).items() if not k.startswith("_") and _is_data(v))
    out.update((k, v) for k, v in vars(original).items() if not k.startswith("_") and _is_data(v))
    out.pop("training", None)
    return {k: v for k, v in out.items() if not hasattr(region_type, k)}


# Hugging Face resolves these output-format flags from the module's config when a call leaves
# them out (or passes None): @capture_outputs / merge_with_config_defaults, and older forwards'
# ``x if x is not None else self.config.x``. Default where the config has no such field.
_HF_OUTPUT_FLAGS = {"return_dict": True, "output_attentions": False, "output_hidden_states": False}


def implied_constants(original: nn.Module) -> dict[str, Any]:
    """The constants a call to ``original`` means when it leaves them out: ``generate()`` passes
    ``return_dict=True, output_attentions=False`` where the forward the region was captured from
    passed nothing, and both calls run the same graph. Empty for modules without an HF config."""
    config = getattr(original, "config", None)
    if config is None or not hasattr(config, "to_dict") or not hasattr(config, "output_hidden_states"):
        return {}
    return {k: getattr(config, k, default) for k, default in _HF_OUTPUT_FLAGS.items()}


def same_constants(a: dict[str, Any], b: dict[str, Any], implied: dict[str, Any]) -> bool:
    """``a == b`` once each side's left-out (or None) implied constants take their implied value."""
    def full(c):
        return {**c, **{k: v for k, v in implied.items() if c.get(k) is None}}
    return full(a) == full(b)
