"""Passes, analyses and the pass manager.

A compiled model is a :class:`Program`: the captured regions (one ``GraphModule`` each) plus the
outer model they sit in. A pass is a small frozen dataclass whose fields are its options:

* :class:`GraphPass` ``run(gm, ctx) -> PassResult`` runs once per region;
* :class:`ProgramPass` ``run_program(program, ctx)`` sees every region at once (calibration must
  push data through the whole outer model).

Analyses are computed on demand, cached per region in ``ctx.analyses`` and dropped after a pass
that modified the region unless its :class:`PassResult` lists them in ``preserved``.

Pipelines have a text form, ``canonicalize-linear,detect-outliers{threshold=6.0},dce``, that
:func:`parse_pipeline` and :func:`print_pipeline` turn into each other. Each pass declares a
contract (:mod:`qcompiler.contracts`); :meth:`PassManager.check` walks a pipeline's contracts
before any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from qcompiler.compile_state import CompileState
from qcompiler.contracts import CALIBRATION_DATA, Contract, apply_contract, check_facts, check_pipeline
from qcompiler.errors import ConfigError, PassError, QCompilerError
from qcompiler.registry import Registry
from qcompiler.verify import verify_graph

__all__ = [
    "Region",
    "Program",
    "PassResult",
    "Pass",
    "GraphPass",
    "ProgramPass",
    "Analysis",
    "AnalysisManager",
    "PassContext",
    "PassManager",
    "PASSES",
    "register_pass",
    "get_pass",
    "list_passes",
    "parse_pipeline",
    "print_pipeline",
]


@dataclass
class Region:
    """One captured piece of the model: ``path`` is its module path in the outer model
    (``""`` when the whole model was captured); ``module`` is what stands there and runs ``gm``."""

    path: str
    module: nn.Module  # a qcompiler.capture.RegionModule, or anything with a ``gm`` attribute

    @property
    def gm(self) -> fx.GraphModule:
        return self.module.gm

    @gm.setter
    def gm(self, gm: fx.GraphModule) -> None:
        self.module.gm = gm

    @property
    def label(self) -> str:
        return self.path or "<model>"


@dataclass
class Program:
    regions: list[Region]
    root: nn.Module  # the outer model with every region already swapped in
    facts: frozenset = frozenset()  # what the passes run so far established (qcompiler.contracts)


@dataclass(frozen=True)
class PassResult:
    graph_module: fx.GraphModule
    modified: bool
    preserved: frozenset = frozenset()  # analysis classes still valid; ALL means all of them

    ALL: ClassVar[frozenset] = frozenset({"*"})


class Pass:
    """Base of every pass. Subclasses are frozen dataclasses registered with
    :func:`register_pass`; their fields are the options of the text form."""

    name: ClassVar[str] = ""

    def contract(self) -> Contract:
        """What this pass (with these options) requires, forbids, ensures and invalidates; the
        pass manager checks a whole pipeline's contracts before any work. Default: nothing."""
        return Contract()

    def requires(self, gm: fx.GraphModule, ctx: "PassContext") -> None:
        """Raise if the graph is not in a state this pass can handle (default: the contract's
        required facts that a graph shows)."""
        check_facts(self.contract().requires, gm, ctx, "needs")

    def ensures(self, gm: fx.GraphModule, ctx: "PassContext") -> None:
        """Raise if the pass did not leave the graph in the state it promises (default: the
        contract's ensured facts that a graph shows)."""
        check_facts(self.contract().ensures, gm, ctx, "promised")

    def __str__(self) -> str:
        return print_pipeline([self])


class GraphPass(Pass):
    def run(self, gm: fx.GraphModule, ctx: "PassContext") -> PassResult:
        raise NotImplementedError


class ProgramPass(Pass):
    def run_program(self, program: Program, ctx: "PassContext") -> dict[str, PassResult]:
        """Returns one result per region path."""
        raise NotImplementedError


class Analysis:
    """Computed on demand from a region; subclasses implement ``compute``."""

    @classmethod
    def compute(cls, region: Region, ctx: "PassContext", **params) -> Any:
        raise NotImplementedError


class AnalysisManager:
    def __init__(self):
        self._cache: dict[tuple, Any] = {}

    @staticmethod
    def _key(cls, region: Region, params: dict) -> tuple:
        return (cls, region.path, tuple(sorted(params.items())))

    def get(self, cls: type[Analysis], region: Region, ctx: "PassContext", **params) -> Any:
        key = self._key(cls, region, params)
        if key not in self._cache:
            self._cache[key] = cls.compute(region, ctx, **params)
        return self._cache[key]

    def put(self, cls: type[Analysis], region: Region, value: Any, **params) -> None:
        self._cache[self._key(cls, region, params)] = value

    def cached(self, cls: type[Analysis], region: Region, **params) -> bool:
        return self._key(cls, region, params) in self._cache

    def invalidate(self, region: Region, preserved: frozenset) -> list[type]:
        if "*" in preserved:
            return []
        dropped = [k for k in self._cache if k[1] == region.path and k[0] not in preserved]
        for k in dropped:
            del self._cache[k]
        return [k[0] for k in dropped]


@dataclass
class PassContext:
    """What passes share during one compile: calibration data, analyses, the typed state passes
    record for later ones (``state``), notes for the report. ``options`` is free-form, for user passes."""

    options: dict[str, Any] = field(default_factory=dict)
    state: CompileState = field(default_factory=CompileState)
    scheme: str = ""
    backend: str = ""
    progress: bool = False                # the one switch for every progress bar of the compile
    calibration_data: Any = None          # a qcompiler.calibration.CalibrationSet, or None
    analyses: AnalysisManager = field(default_factory=AnalysisManager)
    notes: dict[str, list[str]] = field(default_factory=dict)  # region/layer -> facts for the report
    history: list[str] = field(default_factory=list)
    verify: bool = False
    region: Region | None = None          # the region being processed
    current_node: str | None = None

    @contextlib.contextmanager
    def at(self, node: fx.Node) -> Iterator[None]:
        """Marks ``node`` as the one being worked on, so a failure can name it."""
        prev, self.current_node = self.current_node, node.name
        yield
        self.current_node = prev

    def note(self, layer: str, text: str) -> None:
        self.notes.setdefault(layer, []).append(text)

    def analysis(self, cls: type[Analysis], **params) -> Any:
        assert self.region is not None, "analysis() is only valid inside a pass"
        return self.analyses.get(cls, self.region, self, **params)


# --------------------------------------------------------------------------------- registry

# The built-in passes register themselves when qcompiler.passes is imported: the first look-up does it.
PASSES: Registry[type[Pass]] = Registry("pass", builtins="qcompiler.passes")


def register_pass(name: str):
    """Class decorator: makes a pass available by name to pipelines and schemes.

    >>> @register_pass("keep-fp16-edges")
    ... @dataclass(frozen=True)
    ... class KeepEdges(GraphPass):
    ...     def run(self, gm, ctx): ...
    """
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise ConfigError(f"pass name {name!r} must be lower-case words joined by '-'")

    def deco(cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, (GraphPass, ProgramPass))):
            raise ConfigError(f"{cls!r} must subclass qcompiler.GraphPass or qcompiler.ProgramPass")
        if not dataclasses.is_dataclass(cls):
            cls = dataclass(frozen=True)(cls)
        cls.name = name
        return PASSES.register(name, cls)

    return deco


def get_pass(name: str) -> type[Pass]:
    return PASSES.get(name)


def list_passes() -> list[str]:
    return PASSES.names()


# ------------------------------------------------------------------------------ text form

def _format_value(v: Any) -> str:
    if v is None:
        return "none"  # read back as None by _parse_value for Optional options
    if isinstance(v, enum.Enum):
        return str(v.value)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return ":".join(_format_value(x) for x in v)
    return str(v)


def _parse_value(text: str, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text == "none" and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if origin is tuple:
            return tuple(_parse_value(t, args[0], where) for t in text.split(":") if t)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return tp(text)
        if tp is bool:
            if text not in ("true", "false"):
                raise ValueError(text)
            return text == "true"
        if tp in (int, float, str):
            return tp(text)
    except ValueError:
        raise ConfigError(f"{where}: cannot read {text!r} as {getattr(tp, '__name__', tp)}") from None
    raise ConfigError(f"{where}: options of type {tp} cannot be written in text")


def print_pipeline(passes: list[Pass]) -> str:
    out = []
    for p in passes:
        opts = [f"{f.name}={_format_value(getattr(p, f.name))}" for f in dataclasses.fields(p)]
        out.append(p.name + ("{" + ",".join(opts) + "}" if opts else ""))
    return ",".join(out)


_ITEM = re.compile(r"\s*([a-z][a-z0-9-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """``"calibrate{max_batches=8},detect-outliers{threshold=6.0}"`` -> pass instances."""
    passes, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise ConfigError(f"cannot parse pipeline at character {pos}: {text[pos:pos + 30]!r}",
                              hint="write name{option=value,...} items separated by commas")
        pos = m.end()
        cls = get_pass(m.group(1))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for item in filter(None, (s.strip() for s in (m.group(2) or "").split(","))):
            key, eq, val = item.partition("=")
            key = key.strip()
            if not eq or key not in fields:
                raise ConfigError(f"pass '{cls.name}': unknown option {key!r}",
                                  hint=f"options: {', '.join(fields) or '(none)'}")
            kwargs[key] = _parse_value(val.strip(), hints[key], f"pass '{cls.name}' option '{key}'")
        passes.append(cls(**kwargs))
    return passes


# --------------------------------------------------------------------------- the manager

class PassManager:
    """Runs a pipeline over a program; verifies between passes when ``ctx.verify`` is set."""

    def __init__(self, passes: list[Pass] | str):
        self.passes = parse_pipeline(passes) if isinstance(passes, str) else list(passes)

    def __str__(self) -> str:
        return print_pipeline(self.passes)

    def check(self, facts=()) -> frozenset:
        """Checks the pipeline's contracts from ``facts`` (what holds before it: e.g.
        ``{CALIBRATION_DATA}``) without touching a graph; raises :class:`ConfigError` naming the
        first pass whose requirement is unmet. Returns the facts after the pipeline."""
        return check_pipeline(self.passes, facts)

    def run(self, program: Program, ctx: PassContext) -> Program:
        given = frozenset({CALIBRATION_DATA} if ctx.calibration_data is not None else ())
        self.check(program.facts | given)  # an impossible pipeline fails here, before any work
        bar = tqdm(self.passes, desc="passes", unit="pass", leave=False,
                   disable=not ctx.progress)
        for p in bar:
            bar.set_postfix_str(p.name, refresh=False)
            try:
                self._run_one(p, program, ctx)
                if ctx.verify:
                    for region in program.regions:
                        ctx.region = region
                        verify_graph(region.gm, after=p.name)
            except PassError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is re-raised with its place
                hint = e.hint if isinstance(e, QCompilerError) else None
                msg = e.message if isinstance(e, QCompilerError) else f"{type(e).__name__}: {e}"
                raise PassError(msg, pass_name=p.name, history=ctx.history, node=ctx.current_node,
                                region=ctx.region.label if ctx.region else None, hint=hint) from e
            finally:
                ctx.region = None
            ctx.history.append(p.name)
            ctx.current_node = None
            program.facts = apply_contract(program.facts, p.contract()) - given
        return program

    def _run_one(self, p: Pass, program: Program, ctx: PassContext) -> None:
        if isinstance(p, ProgramPass):
            for region in program.regions:
                ctx.region = region
                p.requires(region.gm, ctx)
            ctx.region = None
            results = p.run_program(program, ctx)
            for region in program.regions:
                self._apply(region, results[region.path], p, ctx)
            return
        regions = tqdm(program.regions, desc=p.name, unit="region", leave=False,
                       disable=not ctx.progress or len(program.regions) < 2)
        for region in regions:
            ctx.region = region
            p.requires(region.gm, ctx)
            self._apply(region, p.run(region.gm, ctx), p, ctx)

    @staticmethod
    def _apply(region: Region, result: PassResult, p: Pass, ctx: PassContext) -> None:
        ctx.region = region
        if result.graph_module is not region.gm:
            region.gm = result.graph_module
        if result.modified:
            region.gm.recompile()
            ctx.analyses.invalidate(region, result.preserved)
        p.ensures(region.gm, ctx)
