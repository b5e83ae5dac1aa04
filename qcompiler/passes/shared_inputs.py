"""Which captured regions read the same activation, and which eager module produced it.

A Hugging Face Llama is captured region by region: q_proj, k_proj and v_proj are three regions,
the RMSNorm in front of them stays eager code. Inside one region the scale-folding analysis
(``scale_folding``) sees only a placeholder, so SmoothQuant / AWQ would give each projection its
own scale and an explicit ``x * (1/s)``. llm-compressor instead shares one scale among every
linear reading the same tensor and folds ``1/s`` into the norm that produced it. This module
finds those groups by running one calibration call through the outer model:

* a forward hook on every eager module records the tensor object it returns (the producer);
* a pre-hook on every region records which tensor object each of its placeholders receives;
* a ``TorchFunctionMode`` records every other torch op that reads one of those tensors outside
  the regions (a residual add, a slice, ``return``-ed hidden states are caught by the last
  check below), so a fold never changes what another reader sees.

A :class:`SharedInput` is kept only where the producer is an eager module, every reader is a
linear of a region reading the placeholder directly, and nothing else reads the tensor (shape
queries aside). The candidates that fail say why (``rejected``), for the report.

Before (two regions, eager norm)::

    h = input_layernorm(x)          # eager
    q = q_proj(h); k = k_proj(h); v = v_proj(h)   # regions, each: aten.linear(%input, %w)

Found::

    SharedInput(producer="model.layers.0.input_layernorm",
                members=[("...q_proj", "input"), ("...k_proj", "input"), ("...v_proj", "input")])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from qcompiler.graph.nodes import is_linear, linear_parts
from qcompiler.pass_manager import Program, Region
from qcompiler.spec import get_spec

__all__ = ["SharedMember", "SharedInput", "SharedInputs", "find_shared_inputs"]

# Tensor methods / properties that only look at metadata (reading them is not reading the values).
_META_METHODS = {"size", "dim", "numel", "stride", "is_contiguous", "element_size", "nelement", "ndimension",
                 "get_device", "is_floating_point", "is_complex"}
_META_PROPERTIES = {"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "is_sparse",
                    "is_quantized", "is_meta", "grad_fn", "names"}


@dataclass(frozen=True)
class SharedMember:
    region: Region
    placeholder: str          # the placeholder node's name in region.gm
    linears: tuple[str, ...]  # names of the annotated linear nodes reading it directly


@dataclass
class SharedInput:
    producer: str                 # module path of the eager module whose output the members read
    module: nn.Module
    members: list[SharedMember]
    sample_input: torch.Tensor    # what the producer was called with (for the fold check)

    @property
    def layers(self) -> list[str]:
        return [get_spec(_node(m.region.gm, n)).layer for m in self.members for n in m.linears]


@dataclass
class SharedInputs:
    groups: list[SharedInput] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # layer -> why its input is not a shared one

    def of(self, region: Region, placeholder: str) -> SharedInput | None:
        for g in self.groups:
            if any(m.region is region and m.placeholder == placeholder for m in g.members):
                return g
        return None


def _node(gm: fx.GraphModule, name: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)


def _is_meta_read(func) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "") in _META_PROPERTIES
    return name in _META_METHODS


class _Readers(TorchFunctionMode):
    """Counts, per watched tensor, the torch ops outside the regions that read its values."""

    def __init__(self):
        super().__init__()
        self.watched: dict[int, torch.Tensor] = {}
        self.reads: dict[int, str] = {}
        self.inside_region = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.inside_region and self.watched and not _is_meta_read(func):
            for a in list(args) + list(kwargs.values()):
                for t in (a if isinstance(a, (list, tuple)) else (a,)):
                    if isinstance(t, torch.Tensor) and self.watched.get(id(t)) is t:
                        self.reads.setdefault(id(t), getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


def _placeholders(region: Region) -> list[fx.Node]:
    return [n for n in region.gm.graph.nodes if n.op == "placeholder"]


def _direct_linears(region: Region, ph: fx.Node) -> tuple[list[fx.Node], str]:
    """The annotated linears reading ``ph`` directly, or ``([], why not)``."""
    linears = [u for u in ph.users if is_linear(u) and get_spec(u) is not None and linear_parts(u)[0] is ph]
    others = [u for u in ph.users if u not in linears and not (u.op == "call_module" and u.target == "_guards_fn")
              and not (u.op == "call_function" and "sym_size" in str(u.target))]
    if others:
        return [], f"'{ph.name}' of region '{region.label}' is also read by '{others[0].name}'"
    return linears, ""


def find_shared_inputs(program: Program, call: tuple[tuple, dict]) -> SharedInputs:
    """Runs ``call`` (``(args, kwargs)`` of the outer model) once and returns the shared inputs."""
    regions = {id(r.module): r for r in program.regions}
    region_modules = {r.module for r in program.regions}
    produced: dict[int, tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = {}  # id(out) -> producer
    read_by: dict[int, list[tuple[Region, fx.Node]]] = {}
    keep: list[torch.Tensor] = []  # ids stay valid while the tensors live
    mode = _Readers()

    def region_pre(module, args, kwargs):
        mode.inside_region += 1
        region = regions[id(module)]
        names = getattr(module, "_names", None)
        phs = _placeholders(region)
        if names is None or len(names) != len(phs):
            return None
        try:
            bound = module._signature.bind(None, *args, **kwargs)
        except TypeError:
            return None
        values = dict(list(bound.arguments.items())[1:])
        for name, ph in zip(names, phs):
            t = values.get(name)
            if type(t) is torch.Tensor and id(t) in produced:  # noqa: E721 - plain tensors only
                read_by.setdefault(id(t), []).append((region, ph))
        return None

    def region_post(module, args, output):
        mode.inside_region -= 1

    def eager_post(path):
        def hook(module, args, output):
            if mode.inside_region or not isinstance(output, torch.Tensor) or not args or \
                    not isinstance(args[0], torch.Tensor):
                return
            keep.extend([output, args[0]])
            produced[id(output)] = (path, module, output, args[0].detach())
            mode.watched[id(output)] = output
        return hook

    handles = []
    for path, m in program.root.named_modules():
        if m in region_modules:
            handles.append(m.register_forward_pre_hook(region_pre, with_kwargs=True))
            handles.append(m.register_forward_hook(region_post))
        elif path and not _inside_region(path, program):
            handles.append(m.register_forward_hook(eager_post(path)))
    try:
        with torch.no_grad(), mode:
            out = program.root(*call[0], **call[1])
    finally:
        for h in handles:
            h.remove()
    returned = {id(t) for t in _tensors(out)}

    result = SharedInputs()
    for key, readers in read_by.items():
        path, module, _, sample = produced[key]
        members, why = [], ""
        for region, ph in readers:
            linears, reason = _direct_linears(region, ph)
            if not linears:
                why = why or reason or f"'{ph.name}' of region '{region.label}' is not read by a linear"
            members.append(SharedMember(region, ph.name, tuple(n.name for n in linears)))
        if key in mode.reads:
            why = why or f"the output of '{path}' is also read by {mode.reads[key]} outside the regions"
        if key in returned:
            why = why or f"the output of '{path}' is returned by the model"
        if why:
            for m in members:
                for name in m.linears:
                    result.rejected[get_spec(_node(m.region.gm, name)).layer] = why
            continue
        result.groups.append(SharedInput(path, module, members, sample))
    return result


def _inside_region(path: str, program: Program) -> bool:
    return any(r.path and path.startswith(r.path + ".") for r in program.regions)


def _tensors(out) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
