"""Where a model's parameters, buffers and submodules are, to tell when captured CUDA graphs went stale.

A CUDA graph replays its kernels on the memory it was captured with. Changing a weight in place
(``load_state_dict(sd)``, ``param.copy_(...)``) is seen by the next replay; replacing it is not:
``load_state_dict(sd, assign=True)``, ``module.float()``, ``param.data = t`` or a new submodule
leave the graph reading the old tensor (or freed memory), a silent wrong answer.
:class:`TensorPlaces` records, once, every module's parameter / buffer / child slots with what they
held and each tensor's address; :meth:`moved` compares them again (~0.07 ms for a 22-layer Llama's 650
slots on a 2-core CPU), so :class:`~qcompiler.runtime.decode_loop.DecodeLoop` drops its captured graphs and
captures again when something moved.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

__all__ = ["TensorPlaces"]


class TensorPlaces:
    """The slots of ``model``'s parameters, buffers and submodules and what they held at :meth:`record`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._held: Optional[list] = None  # (slot dict, name, object held, its data_ptr or None)

    def record(self) -> None:
        held = []
        for module in self.model.modules():
            for slots in (module._parameters, module._buffers, module._modules):
                for name, obj in slots.items():
                    held.append((slots, name, obj, obj.data_ptr() if hasattr(obj, "data_ptr") else None))
        self._held = held

    def moved(self) -> bool:
        """True if a recorded slot now holds another object or its tensor another address (or
        nothing was recorded yet)."""
        if self._held is None:
            return True
        for slots, name, obj, ptr in self._held:
            now = slots.get(name)
            if now is not obj or (ptr is not None and now.data_ptr() != ptr):
                return True
        return False
