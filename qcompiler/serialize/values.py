"""JSON forms of the Python values a saved model holds, and back, without executing anything.

Two codecs:

* typed (:func:`to_json` / :func:`from_json`): dataclasses, enums, tuples, dicts and floats,
  read back by the declared type hints (specs, reports, digests). New fields with defaults and
  new enums in qcompiler's own dataclasses need no change here.
* tagged (:func:`encode_arg` / :func:`decode_arg`): fx node arguments, where no type hints
  exist: nodes, tuples, dtypes, devices, slices, ... each carries a one-key tag.

Only dataclasses defined in ``qcompiler.*`` modules can be named by a file (:func:`resolve_class`).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import math
import types
import typing
from typing import Any, Callable

import torch
from torch import fx

from qcompiler.serialize.errors import LoadError, SaveError

__all__ = ["to_json", "from_json", "encode_arg", "decode_arg", "class_name", "resolve_class"]


def _float_out(v: float) -> Any:
    return v if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))


def _float_in(v: Any) -> float:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def to_json(v: Any) -> Any:
    """Dataclasses -> dicts, enums -> values, tuples -> lists, non-finite floats -> strings."""
    if isinstance(v, enum.Enum):
        return v.value
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: to_json(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): to_json(x) for k, x in v.items()}
    if isinstance(v, bool) or v is None or isinstance(v, (str, int)):
        return v
    if isinstance(v, float):
        return _float_out(v)
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    raise TypeError(f"cannot write a {type(v).__name__} as JSON")


def from_json(tp: Any, v: Any) -> Any:
    """The inverse of :func:`to_json`, guided by the type ``tp`` (a type hint)."""
    if tp is Any or tp is object:
        return v
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return from_json(a, v)
            except (TypeError, ValueError, KeyError) as e:
                errors.append(str(e))
        raise ValueError(f"{v!r} fits none of {tp}: {'; '.join(errors)}")
    if origin in (tuple, list):
        if not isinstance(v, list):
            raise ValueError(f"expected a list for {tp}, got {v!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(v):
                raise ValueError(f"expected {len(args)} items for {tp}, got {len(v)}")
            return tuple(from_json(a, x) for a, x in zip(args, v))
        item = args[0] if args else Any
        out = [from_json(item, x) for x in v]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        kt, vt = args if args else (Any, Any)
        if not isinstance(v, dict):
            raise ValueError(f"expected an object for {tp}, got {v!r}")
        return {from_json(kt, k): from_json(vt, x) for k, x in v.items()}
    if tp is tuple or tp is list:
        return tp(v)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(v)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise ValueError(f"expected an object for {tp.__name__}, got {v!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(v) - names
        if unknown:
            raise ValueError(f"{tp.__name__} has no field(s) {', '.join(sorted(unknown))}")
        return tp(**{k: from_json(hints[k], x) for k, x in v.items()})
    if tp is float:
        return _float_in(v)
    if tp is bool:
        if not isinstance(v, bool):
            raise ValueError(f"expected true/false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {v!r}")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise ValueError(f"expected a string, got {v!r}")
        return v
    if tp is torch.dtype:
        return _dtype(v)
    if tp is type(None):
        if v is not None:
            raise ValueError(f"expected null, got {v!r}")
        return None
    raise TypeError(f"cannot read type {tp} from JSON")


def class_name(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(name: str) -> type:
    """A dataclass of qcompiler's own, by ``module:qualname``; nothing else may be named."""
    module, _, qual = name.partition(":")
    if not (module == "qcompiler" or module.startswith("qcompiler.")) or not qual:
        raise LoadError(f"the file names class {name!r}, which is not a qcompiler dataclass",
                        hint="only qcompiler's own spec/report dataclasses can appear in a saved model")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise LoadError(f"class {name!r} named in the file does not exist in this qcompiler ({e})",
                        hint="load with the qcompiler version that saved the model") from None
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise LoadError(f"{name!r} named in the file is not a dataclass")
    return obj


# ----------------------------------------------------------------------------- tagged (fx args)

def _dtype(name: str) -> torch.dtype:
    v = getattr(torch, str(name), None)
    if not isinstance(v, torch.dtype):
        raise ValueError(f"{name!r} is not a torch dtype")
    return v


def _named(kind: type, name: str) -> Any:
    v = getattr(torch, str(name), None)
    if not isinstance(v, kind):
        raise ValueError(f"{name!r} is not a torch.{kind.__name__}")
    return v


def encode_arg(v: Any, tensor: Callable[[torch.Tensor], Any] | None = None) -> Any:
    """An fx argument (or an example-input tree) as tagged JSON. ``tensor`` maps tensors to a
    reference (example inputs); without it a tensor is an error (graphs read them by get_attr)."""
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if v is None or isinstance(v, (bool, str)) or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": _float_out(v)}
    if isinstance(v, torch.Tensor):
        if tensor is None:
            raise SaveError("a tensor appears as a literal node argument")
        return {"tensor": tensor(v)}
    if isinstance(v, tuple):  # torch.Size too
        return {"tuple": [encode_arg(x, tensor) for x in v]}
    if isinstance(v, list):
        return [encode_arg(x, tensor) for x in v]
    if isinstance(v, dict):
        return {"dict": [[encode_arg(k, tensor), encode_arg(x, tensor)] for k, x in v.items()]}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    if isinstance(v, torch.layout):
        return {"layout": str(v).removeprefix("torch.")}
    if isinstance(v, torch.memory_format):
        return {"memory_format": str(v).removeprefix("torch.")}
    if isinstance(v, slice):
        return {"slice": [encode_arg(v.start), encode_arg(v.stop), encode_arg(v.step)]}
    if isinstance(v, enum.Enum):
        return {"enum": class_name(v), "value": v.value}
    raise SaveError(f"cannot save a value of type {type(v).__name__} ({v!r:.80})")


def decode_arg(v: Any, nodes: dict[str, fx.Node] | None = None,
               tensor: Callable[[Any], torch.Tensor] | None = None) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [decode_arg(x, nodes, tensor) for x in v]
    if not isinstance(v, dict) or not v:
        raise ValueError(f"unexpected value {v!r}")
    tag = next(iter(v))
    x = v[tag]
    if tag == "node":
        if nodes is None or x not in nodes:
            raise ValueError(f"reference to node {x!r}, which is not defined before its use")
        return nodes[x]
    if tag == "float":
        return _float_in(x)
    if tag == "tensor":
        if tensor is None:
            raise ValueError("a tensor reference where none is allowed")
        return tensor(x)
    if tag == "tuple":
        return tuple(decode_arg(e, nodes, tensor) for e in x)
    if tag == "dict":
        return {decode_arg(k, nodes, tensor): decode_arg(e, nodes, tensor) for k, e in x}
    if tag == "dtype":
        return _dtype(x)
    if tag == "device":
        return torch.device(x)
    if tag == "layout":
        return _named(torch.layout, x)
    if tag == "memory_format":
        return _named(torch.memory_format, x)
    if tag == "slice":
        return slice(*(decode_arg(e) for e in x))
    if tag == "enum":
        cls = _resolve_enum(x)
        return cls(v["value"])
    raise ValueError(f"unknown tag {tag!r}")


def _resolve_enum(name: str) -> type:
    module, _, qual = name.partition(":")
    if not (module == "qcompiler" or module.startswith("qcompiler.")):
        raise ValueError(f"enum {name!r} is not one of qcompiler's")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, enum.Enum)):
        raise ValueError(f"{name!r} is not an enum")
    return obj
