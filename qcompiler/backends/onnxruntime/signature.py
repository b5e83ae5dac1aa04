"""A model call as a flat list of tensors and back: how ONNX inputs and outputs map to the
model's own call signature.

ONNX graphs take and return flat lists of tensors. :class:`CallSpec` records, from the example
call, which arguments are tensors (graph inputs, named after the argument), which are constants
(fixed at export, checked on every later call), and the output's pytree structure (a tensor, a
tuple, a Hugging Face ``ModelOutput``), so a session can be called exactly like the model.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import (GetAttrKey, MappingKey, SequenceKey, TreeSpec, tree_flatten,
                                 tree_flatten_with_path, tree_unflatten)

from qcompiler.errors import ConfigError, UnsupportedError

__all__ = ["CallSpec", "call_signature", "FlatCall"]


def call_signature(module: nn.Module) -> inspect.Signature:
    """The signature users call ``module`` with (a captured region keeps its original one)."""
    from qcompiler.capture import RegionModule
    if isinstance(module, RegionModule):  # it keeps the captured module's forward signature
        sig = getattr(module, "_signature", None) or inspect.signature(module._signature_of)
        return inspect.Signature(list(sig.parameters.values())[1:])  # drop self
    return inspect.signature(module.forward)


def _name(path) -> str:
    parts = []
    for k in path:
        key = k.key if isinstance(k, MappingKey) else k.idx if isinstance(k, SequenceKey) else \
            k.name if isinstance(k, GetAttrKey) else k
        parts.append(str(key))
    return re.sub(r"\W+", "_", "_".join(parts)).strip("_") or "input"


class _Tensor:
    """Stands for a tensor argument in a recorded call's template."""

    def __repr__(self) -> str:
        return "<tensor>"


_TENSOR = _Tensor()


def _normalize(arguments: dict[str, Any], sig: inspect.Signature) -> dict[str, Any]:
    out = {}
    for name, value in arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(sorted(value.items()))  # order-independent
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            out[name] = tuple(value)
        else:
            out[name] = value
    return out


@dataclass
class CallSpec:
    """How one call maps to ONNX inputs/outputs. Built by :meth:`record`."""

    signature: inspect.Signature
    in_spec: TreeSpec
    in_template: list[Any]                 # constants in place; tensors replaced by _TENSOR
    tensor_slots: list[int]                # positions of the tensor leaves in ``in_template``
    input_names: list[str]
    fixed: dict[str, Any]                  # arguments set at export (use_cache=False), absent from calls
    out_spec: TreeSpec | None = None
    out_template: list[Any] = field(default_factory=list)
    out_slots: list[int] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    @classmethod
    def record(cls, module: nn.Module, args: tuple, kwargs: dict, fixed: dict[str, Any] | None = None) -> "CallSpec":
        sig = call_signature(module)
        fixed = {k: v for k, v in (fixed or {}).items() if k in sig.parameters and k not in kwargs}
        arguments = cls._bind(sig, args, {**kwargs, **fixed})
        flat, spec = tree_flatten_with_path(arguments)
        slots = [i for i, (_, v) in enumerate(flat) if isinstance(v, torch.Tensor)]
        names, seen = [], set()
        for i in slots:
            n = _name(flat[i][0])
            while n in seen:
                n += "_"
            seen.add(n)
            names.append(n)
        template = [_TENSOR if i in slots else v for i, (_, v) in enumerate(flat)]
        return cls(sig, spec, template, slots, names, fixed)

    @staticmethod
    def _bind(sig: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
        try:
            return _normalize(dict(sig.bind(*args, **kwargs).arguments), sig)
        except TypeError as e:
            raise ConfigError(f"the call does not fit the model's signature {sig}: {e}") from None

    # --- inputs
    def flatten(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """The ONNX inputs of a call shaped like the recorded one; raises if it is not."""
        for k, v in self.fixed.items():
            if k in kwargs and kwargs[k] != v:
                raise UnsupportedError(f"the ONNX model was exported with {k}={v!r}; this call passes {k}={kwargs[k]!r}",
                                       hint="call without it, or use the eager module (qm.program.root)")
        arguments = self._bind(self.signature, args, {**kwargs, **self.fixed})
        leaves, spec = tree_flatten(arguments)
        if spec != self.in_spec:
            raise UnsupportedError(self._difference(arguments),
                                   hint="export again with example inputs shaped like this call")
        tensors = []
        for i, (leaf, want) in enumerate(zip(leaves, self.in_template)):
            if i in self.tensor_slots:
                if not isinstance(leaf, torch.Tensor):
                    raise UnsupportedError(f"input '{self.input_names[self.tensor_slots.index(i)]}' must be a tensor, "
                                           f"got {type(leaf).__name__}")
                tensors.append(leaf)
            elif isinstance(leaf, torch.Tensor) or leaf != want:
                raise UnsupportedError(f"argument {i} is {leaf!r}, but the ONNX model was exported with {want!r}",
                                       hint="constant arguments are fixed at export: export again with this value")
        return tensors

    def unflatten(self, tensors) -> tuple[tuple, dict]:
        leaves = list(self.in_template)
        for slot, t in zip(self.tensor_slots, tensors):
            leaves[slot] = t
        arguments = tree_unflatten(leaves, self.in_spec)
        bound = inspect.BoundArguments(self.signature, self._restore(arguments))
        return bound.args, bound.kwargs

    def _restore(self, arguments: dict[str, Any]):
        """Undo :func:`_normalize`: gather ``**kwargs`` entries back under their parameter."""
        import collections
        out: dict[str, Any] = collections.OrderedDict()
        var_kw = next((n for n, p in self.signature.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        for name, value in arguments.items():
            if name in self.signature.parameters and self.signature.parameters[name].kind is not inspect.Parameter.VAR_KEYWORD:
                out[name] = value
            elif var_kw is not None:
                out.setdefault(var_kw, {})[name] = value
        return out

    def _difference(self, arguments: dict[str, Any]) -> str:
        """Says how a call's arguments differ from the exported call's."""
        then = tree_unflatten(list(self.in_template), self.in_spec)
        missing, extra = sorted(set(then) - set(arguments)), sorted(set(arguments) - set(then))
        if missing or extra:
            parts = ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"adds {', '.join(extra)}"] if extra else [])
            return f"this call {' and '.join(parts)}; the ONNX model was exported with: {', '.join(then)}"
        for name in then:
            if tree_flatten(arguments[name])[1] != tree_flatten(then[name])[1]:
                return (f"argument '{name}' is a {_kind(arguments[name])} in this call, but was a "
                        f"{_kind(then[name])} when the ONNX model was exported")
        return "this call's arguments are not shaped like the exported call's"

    # --- outputs
    def record_output(self, out: Any) -> list[torch.Tensor]:
        flat, spec = tree_flatten_with_path(out)
        self.out_spec = spec
        self.out_slots = [i for i, (_, v) in enumerate(flat) if isinstance(v, torch.Tensor)]
        self.out_template = [None if i in self.out_slots else v for i, (_, v) in enumerate(flat)]
        names, seen = [], set()
        for i in self.out_slots:
            n = _name(flat[i][0]) if flat[i][0] else "output"
            n = n if not n[0].isdigit() else f"output_{n}"
            while n in seen or n in self.input_names:
                n += "_"
            seen.add(n)
            names.append(n)
        self.output_names = names
        return [flat[i][1] for i in self.out_slots]

    def unflatten_output(self, tensors) -> Any:
        leaves = list(self.out_template)
        for slot, t in zip(self.out_slots, tensors):
            leaves[slot] = t
        return tree_unflatten(leaves, self.out_spec)


def _kind(v: Any) -> str:
    if isinstance(v, (list, tuple, dict)):
        return f"{type(v).__name__} of {len(v)}"
    return "tensor" if isinstance(v, (torch.Tensor, _Tensor)) else type(v).__name__


class FlatCall(nn.Module):
    """``model`` called with the flat tensor inputs of ``spec``, returning the flat tensor outputs:
    what ``torch.onnx.export`` sees. Its forward names one parameter per ONNX input."""

    def __init__(self, model: nn.Module, spec: CallSpec):
        super().__init__()
        self.model = model
        self._spec = spec
        params = ", ".join(spec.input_names)
        scope: dict[str, Any] = {}
        exec(f"def forward(self, {params}):\n"  # noqa: S102 - names are sanitized identifiers
             f"    return self._run(({params}{',' if len(spec.input_names) == 1 else ''}))\n", scope)
        self.forward = scope["forward"].__get__(self)

    def _run(self, tensors):
        args, kwargs = self._spec.unflatten(tensors)
        out = self.model(*args, **kwargs)
        leaves, _ = tree_flatten(out)
        return tuple(t for t in leaves if isinstance(t, torch.Tensor))
