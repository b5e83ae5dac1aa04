"""Capture: the model (or the largest pieces of it that can be) into torch.fx graphs.

``capture_regions`` records how every submodule is called on one example forward, then works
top-down: a module that captures becomes a region; one that does not (a Hugging Face decoder
layer handed a ``DynamicCache``, data-dependent Python control flow, ...) is split into its
children. For a causal LM this yields the MLPs and projections of each decoder block, while the
attention core and its KV cache stay in eager code, so ``generate()`` keeps working.

Each region is swapped into a copy of the model as a :class:`RegionModule` that keeps the
submodule's call signature.
"""

from __future__ import annotations

import copy
import enum
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from tqdm.auto import tqdm

from qcompiler.errors import CaptureError, ConfigError, UnsupportedError
from qcompiler.inference_only import training_error
from qcompiler.output_dtype import follow_dtype_change
from qcompiler.region_attributes import carried_attributes, implied_constants, same_constants

__all__ = ["CaptureMethod", "RegionModule", "CapturePlan", "capture_regions", "capture_module"]


class CaptureMethod(enum.Enum):
    EXPORT = "export"                  # torch.export, non-strict: aten-level, handles HF code
    SYMBOLIC_TRACE = "symbolic_trace"  # torch.fx.symbolic_trace: module-level, no shape specialization

    @classmethod
    def parse(cls, text: str) -> "CaptureMethod":
        try:
            return cls(text)
        except ValueError:
            raise ConfigError(f"unknown capture method {text!r}",
                              hint=f"use one of: {', '.join(m.value for m in cls)}") from None


_CONSTANT_TYPES = (type(None), bool, int, float, str, torch.dtype, torch.device)
_LINEAR_TYPES = (nn.Linear,)


def _is_tensor_tree(v: Any) -> bool:
    leaves, _ = tree_flatten(v)
    return bool(leaves) and all(isinstance(x, torch.Tensor) for x in leaves)


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """All arguments of a call by name, ``**kwargs`` flattened in."""
    sig = inspect.signature(module.forward)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()  # a default is a constant the graph bakes in, like an explicit one
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise CaptureError(f"{type(module).__name__}.forward takes *{name}, which capture does not handle")
        else:
            out[name] = value
    return out


def _split(module_path: str, named: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    tensors, consts = {}, {}
    for name, value in named.items():
        if _is_tensor_tree(value):
            tensors[name] = value
        elif isinstance(value, _CONSTANT_TYPES):
            consts[name] = value
        else:
            raise CaptureError(
                f"'{module_path or '<model>'}' is called with {name}={type(value).__name__}, "
                f"which is neither a tensor nor a constant")
    return tensors, consts


class _BoundCall(nn.Module):
    """``inner`` with its constant arguments fixed, called by keyword with tensors only.

    torch.export binds inputs by the forward's signature and cannot take ``**kwargs``, so the
    forward is built with one explicit parameter per tensor argument.
    """

    def __init__(self, inner: nn.Module, consts: dict[str, Any], names: list[str]):
        super().__init__()
        self.inner = inner
        self._consts = consts
        params = ", ".join(names)
        scope: dict[str, Any] = {}
        exec(f"def forward(self, {params}):\n"  # noqa: S102 - names are the module's own parameters
             f"    return self.inner({', '.join(f'{n}={n}' for n in names)}, **self._consts)\n", scope)
        self.forward = scope["forward"].__get__(self)


def _dynamic_shapes(tensors: dict[str, Any]) -> dict[str, Any]:
    auto = torch.export.Dim.AUTO
    from torch.utils._pytree import tree_map
    return {k: tree_map(lambda t: {i: auto for i in range(t.dim())}, v) for k, v in tensors.items()}


def capture_module(module: nn.Module, path: str, args: tuple, kwargs: dict, method: CaptureMethod,
                   cache: dict | None = None) -> tuple[fx.GraphModule, dict[str, Any], dict[str, Any]]:
    """Capture one call of ``module``; returns ``(graph_module, tensor_kwargs, constant_kwargs)``.

    ``cache`` maps capture keys to earlier captures: a module that traces exactly like one
    captured before (the 32 MLPs of an LLM) reuses that graph with its own weights instead of
    being traced again. Raises :class:`CaptureError` naming the module and the tracer's complaint.
    """
    named = _bind(module, args, kwargs)
    tensors, consts = _split(path, named)
    key = _capture_key(module, tensors, consts) if cache is not None and method is CaptureMethod.EXPORT else None
    if key is not None and key in cache:
        gm, source = cache[key]
        return _rebind(gm, source, module), tensors, consts
    try:
        if method is CaptureMethod.EXPORT:
            from torch.fx.experimental import _config as fx_config
            # Let size-1 dims (a batch of one, a single decode token) stay symbolic.
            with fx_config.patch(backed_size_oblivious=True):
                ep = torch.export.export(_BoundCall(module, consts, list(tensors)), (), tensors,
                                         dynamic_shapes=_dynamic_shapes(tensors), strict=False)
            gm = _trainable_flags(ep.module())
        else:
            gm = fx.symbolic_trace(module, concrete_args=consts)
    except Exception as e:  # noqa: BLE001 - tracers raise anything; we re-raise with the place
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CaptureError(f"cannot capture '{path or '<model>'}' ({type(module).__name__}) with "
                           f"{method.value}: {type(e).__name__}: {first[:300]}") from e
    if key is not None:
        cache[key] = (gm, module)
    return gm, tensors, consts


_SIMPLE = (bool, int, float, str, type(None))
_ABSENT = object()


def _trainable_flags(gm: fx.GraphModule) -> fx.GraphModule:
    """torch.export's module overrides ``train``/``eval`` to raise, which breaks ``model.eval()``
    on every model holding a region; drop the overrides: the graph keeps the mode it was traced in
    (eval), and :meth:`RegionModule.train` says so when asked to train."""
    for name in ("train", "eval"):
        gm.__dict__.pop(name, None)
    return gm


def _capture_key(module: nn.Module, tensors: dict[str, Any], consts: dict[str, Any]) -> tuple:
    """Two calls with equal keys trace to the same graph: same class, same plain attributes
    (anything forward could branch on), same parameter shapes, same input shapes and constants."""
    attrs = tuple((name, k, v) for name, sub in module.named_modules() for k, v in sorted(vars(sub).items())
                  if isinstance(v, _SIMPLE) or (isinstance(v, tuple) and all(isinstance(x, _SIMPLE) for x in v)))
    state = tuple((n, tuple(t.shape), t.dtype) for n, t in module.state_dict(keep_vars=True).items())
    # the device too: a graph may bake in the device it was traced on (blocks of a device map differ)
    inputs = tuple((k, tuple((tuple(t.shape), t.dtype, t.device) for t in tree_flatten(v)[0]))
                   for k, v in tensors.items())
    return (type(module), attrs, state, inputs, tuple(sorted((k, repr(v)) for k, v in consts.items())))


def _rebind(gm: fx.GraphModule, source: nn.Module, target: nn.Module) -> fx.GraphModule:
    """A copy of ``gm`` (captured from ``source``) whose parameters and buffers are ``target``'s:
    the deepcopy memo maps each of source's tensors to target's, so nothing is copied."""
    src, dst = source.state_dict(keep_vars=True), target.state_dict(keep_vars=True)
    memo = {id(src[name]): dst[name] for name in src}
    with warnings.catch_warnings():  # torch's pytree specs warn about their own deprecations when copied
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(gm, memo)


class RegionModule(nn.Module):
    """Stands in for a captured submodule: same call signature, runs the (rewritten) graph.

    After :meth:`freeze` (the end of compile) an exported graph is called positionally, without
    torch.export's input checks and pytree plumbing: a region sits on the hot path of every token.
    """

    def __init__(self, gm: fx.GraphModule, original: nn.Module, path: str, consts: dict[str, Any],
                 method: CaptureMethod, names: list[str]):
        super().__init__()
        self.gm = gm
        self.path = path
        self._signature = inspect.signature(type(original).forward)
        self._consts = consts
        self._method = method
        self._names = list(names)  # the tensor arguments, in the order the graph takes them
        params = [p for p in list(self._signature.parameters)[1:]]
        self._positional = not consts and self._names == params[: len(self._names)]
        self._out_spec = None  # set by freeze()
        self._original_type = type(original).__name__
        self._implied = implied_constants(original)  # return_dict=True where the capture passed none
        for name, value in carried_attributes(original, type(self)).items():  # main_input_name, config
            if name not in self.__dict__:
                object.__setattr__(self, name, value)
        self.train(False)  # the graph runs as traced, in eval mode: say so to whoever asks

    def train(self, mode: bool = True) -> "RegionModule":
        """``eval()`` (``train(False)``) works; ``train()`` raises: the graph was traced in eval
        mode and holds quantized weights (see :func:`qcompiler.inference_only.training_error`)."""
        if mode:
            raise training_error(f"region '{self.path or '<model>'}' ({self._original_type})")
        return super().train(False)

    def _apply(self, fn, recurse=True):
        """``.half()``, ``.to(dtype)``: the graph's fixed output dtypes follow the tensors'."""
        super()._apply(fn, recurse)
        follow_dtype_change(self.gm, fn)
        return self

    def freeze(self) -> None:
        """Turn an exported graph into a plain positional one (idempotent)."""
        codegen = self.gm.graph._codegen
        if self._method is not CaptureMethod.EXPORT or not hasattr(codegen, "pytree_info"):
            return
        gm = self.gm
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
                gm.graph.erase_node(node)
        if hasattr(gm, "_guards_fn"):
            gm.delete_submodule("_guards_fn")
        self._out_spec = codegen.pytree_info.out_spec
        gm.graph._codegen = fx.graph.CodeGen()
        gm._forward_pre_hooks.clear()
        gm._forward_pre_hooks_with_kwargs.clear()
        gm.recompile()

    def _unflatten(self, flat):
        spec = self._out_spec
        return flat[0] if spec.is_leaf() else tree_unflatten(list(flat), spec)

    def forward(self, *args, **kwargs):
        if self._out_spec is not None and self._positional and not kwargs and len(args) == len(self._names) \
                and all(type(a) is torch.Tensor or isinstance(a, nn.Parameter) for a in args):
            return self._unflatten(self.gm(*args))  # the hot path: q_proj(x), mlp(x)
        bound = self._signature.bind(None, *args, **kwargs)
        bound.apply_defaults()
        tensors, consts = {}, {}
        for i, (k, v) in enumerate(bound.arguments.items()):
            if i == 0:
                continue
            items = v.items() if self._signature.parameters[k].kind is inspect.Parameter.VAR_KEYWORD else [(k, v)]
            for name, value in items:
                (tensors if _is_tensor_tree(value) else consts)[name] = value
        if consts != self._consts and not same_constants(consts, self._consts, self._implied):
            diff = {k: (self._consts.get(k, "<absent>"), consts.get(k, "<absent>"))
                    for k in sorted(set(consts) | set(self._consts))
                    if self._consts.get(k, _ABSENT) != consts.get(k, _ABSENT)}
            raise UnsupportedError(
                f"region '{self.path or '<model>'}' ({self._original_type}) was captured with other "
                f"constant arguments than this call: {', '.join(f'{k}: captured {a!r}, now {b!r}' for k, (a, b) in diff.items())}",
                hint="calibrate (or give example_inputs) with calls shaped like the ones you will make")
        if self._method is CaptureMethod.SYMBOLIC_TRACE:
            return self.gm(**tensors, **self._consts)  # the graph's own: equal or implied-equal
        if self._out_spec is not None:
            if set(tensors) != set(self._names):
                raise UnsupportedError(
                    f"region '{self.path or '<model>'}' was captured with tensor arguments {self._names}, "
                    f"now called with {sorted(tensors)}",
                    hint="calibrate (or give example_inputs) with calls shaped like the ones you will make")
            return self._unflatten(self.gm(*tree_flatten([tensors[n] for n in self._names])[0]))
        return self.gm(**tensors)


@dataclass
class CapturePlan:
    """Which submodules became regions, and why their parents did not."""

    regions: list[tuple[str, RegionModule]] = field(default_factory=list)
    split: list[tuple[str, str]] = field(default_factory=list)      # (path, why it was split)
    not_called: list[str] = field(default_factory=list)             # linear-holding modules never run


def _is_linear_module(m: nn.Module) -> bool:
    # Hugging Face's Conv1D (GPT-2) is a linear layer with a transposed [K, N] weight.
    return isinstance(m, _LINEAR_TYPES) or type(m).__name__ == "Conv1D"


def _has_linear(m: nn.Module) -> bool:
    return any(_is_linear_module(s) for s in m.modules())


def _record_calls(model: nn.Module, args: tuple, kwargs: dict) -> dict[nn.Module, tuple[tuple, dict]]:
    calls: dict[nn.Module, tuple[tuple, dict]] = {}

    def hook(mod, a, k):
        calls.setdefault(mod, (a, k))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return calls


def capture_regions(model: nn.Module, args: tuple, kwargs: dict, method: CaptureMethod,
                    whole: bool = False, progress: bool = False, cache: dict | None = None) -> CapturePlan:
    """Capture ``model`` in place: every capturable region is swapped for a RegionModule.

    ``whole=True`` captures the model as one graph or raises CaptureError naming what broke it
    and which submodules would capture instead. ``cache`` (see :func:`capture_module`) may be
    shared between calls, e.g. one per block of a model compiled block by block.
    """
    calls = _record_calls(model, args, kwargs)
    plan = CapturePlan()
    cache = {} if cache is None else cache
    bar = tqdm(desc="capturing", unit="module", leave=False, disable=not progress)

    def visit(path: str, mod: nn.Module, parent: nn.Module | None, attr: str) -> None:
        if not _has_linear(mod):
            return
        if mod not in calls:
            if _is_linear_module(mod):
                plan.not_called.append(path or "<model>")
            for name, child in mod.named_children():  # containers (ModuleList) are never called
                visit(f"{path}.{name}" if path else name, child, mod, name)
            return
        bar.set_postfix_str(path or "<model>")
        try:
            gm, tensors, consts = capture_module(mod, path, *calls[mod], method=method, cache=cache)
            bar.update(1)
        except CaptureError as e:
            bar.update(1)
            if whole and parent is None:
                children = [n for n, c in mod.named_children() if _has_linear(c)]
                raise CaptureError(e.message, hint=(
                    "capture the model region by region (the default, whole=False), or compile "
                    f"these submodules instead: {', '.join(children) or '(none)'}")) from e
            if _is_linear_module(mod):
                raise
            plan.split.append((path or "<model>", e.message))
            for name, child in mod.named_children():
                visit(f"{path}.{name}" if path else name, child, mod, name)
            return
        region = RegionModule(gm, mod, path, consts, method, list(tensors))
        plan.regions.append((path, region))
        if parent is not None:
            setattr(parent, attr, region)

    try:
        visit("", model, None, "")
    finally:
        bar.close()
    return plan
