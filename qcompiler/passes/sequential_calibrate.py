"""Sequential calibration: process the regions of a program one at a time, in execution order,
each fed by the outputs of the regions already processed (GPTQ, AWQ).

Every calibration item runs through the outer model in a worker thread. A forward pre-hook on
each :class:`~qcompiler.capture.RegionModule` stops the worker when it reaches a region not yet
processed and keeps the call's arguments. When every worker is stopped (or finished), the driver
takes the earliest waiting region, moves it to ``device``, hands it the kept calls (moved there
too), moves it back and lets the workers run on - through the now-quantized region, the eager
code after it, up to the next region. Only one thread runs at any time (they pass one lock), so
the run is deterministic and CPU threads are not oversubscribed.

So each region is loaded exactly once, the model runs end to end once per calibration item, and
at any moment the device holds one region plus its calibration inputs: the rest of the model, and
the eager code between regions, stays where it is (e.g. on the CPU). What happened is recorded in
``ctx.state.sequential_trace`` as ``(event, region path)`` pairs: ``load``, ``process``,
``offload``.

Limitations: a region's graph may hold constants baked for the device it was captured on
(``device=cpu`` arguments of factory ops); they are retargeted to ``device`` while the region
is there. Only the first call of a region per calibration item is kept.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import fx, nn
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from qcompiler.errors import CalibrationError, QCompilerError
from qcompiler.pass_manager import PassContext, Program, Region

__all__ = ["run_sequential", "Call", "move_call", "region_device"]

Call = tuple[tuple, dict]


class _Aborted(Exception):
    """Raised inside the workers' forwards to unwind them when the run is abandoned."""


@dataclass
class _Worker:
    index: int
    call: Call
    waiting_at: str | None = None
    finished: bool = False
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


def move_call(call: Call, device: torch.device | None) -> Call:
    if device is None:
        return call
    move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return tree_map(move, call[0]), tree_map(move, call[1])


def region_device(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _retarget(gm: fx.GraphModule, src: torch.device, dst: torch.device) -> None:
    """``device=src`` constants in the graph (factory ops, ``.to``) become ``dst``."""
    swap = lambda a: dst if isinstance(a, torch.device) and a == src else a  # noqa: E731
    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        args, kwargs = tree_map(swap, node.args), tree_map(swap, node.kwargs)
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs, changed = args, kwargs, True
    if changed:
        gm.recompile()


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def run_sequential(program: Program, ctx: PassContext, process: Callable[[Region, list[Call]], None], *,
                   device: str | None = None, what: str = "quantizing", progress: bool = False) -> list[str]:
    """Calls ``process(region, calls)`` once per region reached by the calibration data, in
    execution order; ``calls`` are that region's ``(args, kwargs)``, one per calibration item,
    already on ``device`` (``None``: where the region is). Returns the paths of regions no
    calibration item reached."""
    if ctx.calibration_data is None:
        raise CalibrationError(f"{what} needs calibration data", hint="pass calibration_data=[...] to compile")
    target = torch.device(device) if device is not None else None
    trace = ctx.state.sequential_trace
    by_module = {id(r.module): r for r in program.regions}
    order = {r.path: i for i, r in enumerate(program.regions)}
    cond = threading.Condition()  # held by whichever thread runs: one at a time
    local = threading.local()
    done: set[str] = set()
    pending: dict[str, list[tuple[int, Call]]] = {}
    state = {"abort": False}
    workers = [_Worker(i, c) for i, c in enumerate(ctx.calibration_data.calls)]

    def hook(module, args, kwargs):
        me = getattr(local, "worker", None)
        path = by_module[id(module)].path
        if me is None or path in done:  # the driver's own calls, or a region already processed
            return None
        pending.setdefault(path, []).append((me.index, (args, kwargs)))
        me.waiting_at = path
        cond.notify_all()
        cond.wait_for(lambda: path in done or state["abort"])
        me.waiting_at = None
        if state["abort"]:
            raise _Aborted
        return None

    def work(w: _Worker) -> None:
        local.worker = w
        with cond:
            try:
                with torch.no_grad():
                    program.root(*w.call[0], **w.call[1])
            except _Aborted:
                pass
            except BaseException as e:  # noqa: BLE001 - re-raised by the driver with the item index
                w.error = e
            finally:
                w.finished = True
                cond.notify_all()

    handles = [r.module.register_forward_pre_hook(hook, with_kwargs=True) for r in program.regions]
    bar = tqdm(total=len(program.regions), desc=what, unit="region", disable=not progress, leave=False)
    try:
        with cond:
            for w in workers:
                w.thread = threading.Thread(target=work, args=(w,), name=f"qcompiler-calib-{w.index}", daemon=True)
                w.thread.start()
            try:
                while True:
                    cond.wait_for(lambda: all(w.finished or w.waiting_at is not None for w in workers)
                                  and not any(w.waiting_at in done for w in workers))
                    failed = next((w for w in workers if w.error is not None), None)
                    if failed is not None:
                        e = failed.error
                        if isinstance(e, QCompilerError):
                            raise e
                        raise CalibrationError(f"calibration item {failed.index} failed in the model: "
                                               f"{type(e).__name__}: {e}",
                                               hint="every item must be a valid input of the model") from e
                    waiting = {w.waiting_at for w in workers if w.waiting_at is not None}
                    if not waiting:
                        break
                    path = min(waiting, key=order.__getitem__)
                    calls = [c for _, c in sorted(pending.pop(path), key=lambda e: e[0])]
                    _run_one(program.regions[order[path]], calls, process, target, trace)
                    done.add(path)
                    bar.update(1)
                    cond.notify_all()
            finally:
                state["abort"] = True  # a no-op for finished workers; unwinds any still waiting
                cond.notify_all()
    finally:
        for w in workers:
            if w.thread is not None:
                w.thread.join()
        for h in handles:
            h.remove()
        bar.close()
    return [r.path for r in program.regions if r.path not in done]


def _run_one(region: Region, calls: list[Call], process, target: torch.device | None, trace: list) -> None:
    home = region_device(region.module)
    move = target is not None and not _same_device(home, target)
    if move:
        region.module.to(target)
        _retarget(region.gm, home, target)
    trace.append(("load", region.path))
    try:
        process(region, [move_call(c, target) for c in calls])
        trace.append(("process", region.path))
    finally:
        if move:
            region.module.to(home)
            _retarget(region.gm, target, home)
        trace.append(("offload", region.path))
