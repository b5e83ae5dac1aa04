"""Sequential calibration: regions processed one at a time, in execution order, each fed by the
already-processed regions before it, with the eager code between regions run as usual.

What is tested here (on the CPU): the order of load/process/offload events (never two regions
loaded at once, each exactly once, in the order a plain forward reaches them); that the calls a
region is handed are exactly the inputs it gets in a forward of the model whose earlier regions
were already transformed; regions the data never reaches; failing items; retargeting baked
devices. Not tested: an actual move to a GPU (the suite runs on the CPU; ``device=`` equal to
where the region already is skips the move).
"""

import threading

import pytest
import torch
from torch import nn

from qcompiler.calibration import CalibrationSet
from qcompiler.capture import CaptureMethod, capture_regions
from qcompiler.errors import CalibrationError
from qcompiler.pass_manager import PassContext, PassManager, Program, Region
from qcompiler.graph.nodes import is_linear, linear_parts, resolve_weight
from qcompiler.graph.rebind import set_linear_weight
from qcompiler.passes.sequential_calibrate import _retarget, run_sequential


class Gain:
    """Not a tensor and not a constant: modules called with it cannot be captured whole."""

    def __init__(self, g: float):
        self.g = g


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, gain):
        return self.b(torch.tanh(self.a(x)) * gain.g)  # eager code between the regions a and b


class Net(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.blocks = nn.ModuleList([Block(d) for _ in range(3)])
        self.head, self.alt_head = nn.Linear(d, 4), nn.Linear(d, 4)

    def forward(self, x, gain):
        for blk in self.blocks:
            x = x + blk(x, gain)
        return self.alt_head(x) if gain.g < 0 else self.head(x)


ORDER = ["blocks.0.a", "blocks.0.b", "blocks.1.a", "blocks.1.b", "blocks.2.a", "blocks.2.b", "head"]


def _program(example_gain=1.5):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(5, 16)
    plan = capture_regions(model, (x, Gain(example_gain)), {}, CaptureMethod.EXPORT)
    if example_gain > 0:  # capture alt_head too: one more call with the other branch
        plan_alt = capture_regions(model, (x, Gain(-1.0)), {}, CaptureMethod.EXPORT)
        plan.regions += plan_alt.regions
    program = Program([Region(p, r) for p, r in plan.regions], model)
    PassManager("canonicalize-linear").run(program, PassContext())
    return program


def _calib(n=3, gain=1.5):
    g = torch.Generator().manual_seed(1)
    return CalibrationSet([((torch.randn(4, 16, generator=g), Gain(gain)), {}) for _ in range(n)])


def _halve(region):
    lin = next(n for n in region.gm.graph.nodes if is_linear(n))
    w, _ = resolve_weight(region.gm, linear_parts(lin)[1])
    set_linear_weight(region.gm, lin, w * 0.5, "_halved")
    region.gm.recompile()


def _record_inputs(program, calls):
    seen = {}
    hooks = [r.module.register_forward_pre_hook(
        lambda m, a, k, p=r.path: seen.setdefault(p, []).append(a[0].clone()), with_kwargs=True)
        for r in program.regions]
    try:
        with torch.no_grad():
            for args, kwargs in calls:
                program.root(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_regions_run_one_at_a_time_in_execution_order_on_the_processed_prefix():
    program = _program()
    assert sorted(r.path for r in program.regions) == sorted(ORDER + ["alt_head"])
    calib = _calib()
    before = _record_inputs(program, calib.calls)  # the float model's region inputs
    ctx = PassContext(calibration_data=calib)
    got = {}

    def process(region, calls):
        got[region.path] = [args[0].clone() for args, _ in calls]
        _halve(region)  # stands in for quantization: visible in everything downstream

    unreached = run_sequential(program, ctx, process, device="cpu")
    assert unreached == ["alt_head"]  # no calibration item takes the other branch
    trace = ctx.state.sequential_trace
    assert trace == [(e, p) for p in ORDER for e in ("load", "process", "offload")]
    loaded = 0
    for event, _ in trace:  # never two regions on the device at once
        loaded += {"load": 1, "offload": -1, "process": 0}[event]
        assert loaded in (0, 1)
    after = _record_inputs(program, calib.calls)  # every region now halved
    for path in ORDER:
        assert len(got[path]) == len(calib)
        for mine, ref in zip(got[path], after[path]):
            assert torch.equal(mine, ref), path  # fed by the transformed regions before it
    # ... which is not what the float model feeds it (so the check above can fail)
    assert torch.equal(got["blocks.0.a"][0], before["blocks.0.a"][0])
    assert not torch.equal(got["blocks.0.b"][0], before["blocks.0.b"][0])


def test_a_failing_item_is_reported_and_no_thread_is_left_waiting():
    program = _program()
    calib = _calib()
    calib.calls.insert(1, ((torch.randn(4, 7), Gain(1.0)), {}))  # wrong width: fails in blocks.0.a
    ctx = PassContext(calibration_data=calib)
    before = threading.active_count()
    with pytest.raises(CalibrationError, match="calibration item 1"):
        run_sequential(program, ctx, lambda r, c: None)
    assert threading.active_count() == before
    assert not any(r.module._forward_pre_hooks for r in program.regions)  # hooks removed


def test_an_error_while_processing_unwinds_the_workers():
    program = _program()
    ctx = PassContext(calibration_data=_calib())
    before = threading.active_count()

    def process(region, calls):
        if region.path == "blocks.1.a":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_sequential(program, ctx, process)
    assert threading.active_count() == before
    assert ctx.state.sequential_trace[-1] == ("offload", "blocks.1.a")  # moved back even so


def test_needs_calibration_data():
    with pytest.raises(CalibrationError, match="needs calibration data"):
        run_sequential(_program(), PassContext(), lambda r, c: None)


def test_retarget_rewrites_baked_devices_both_ways():
    class Arange(nn.Module):
        def forward(self, x):
            return x + torch.arange(x.shape[-1], device=x.device)

    gm = torch.export.export(Arange(), (torch.randn(2, 3),)).module()
    cpu, meta = torch.device("cpu"), torch.device("meta")

    def devices():
        return [a for n in gm.graph.nodes for a in list(n.args) + list(n.kwargs.values())
                if isinstance(a, torch.device)]

    assert devices() and all(d == cpu for d in devices())
    _retarget(gm, cpu, meta)
    assert all(d == meta for d in devices())
    _retarget(gm, meta, cpu)
    assert all(d == cpu for d in devices())
    assert torch.equal(gm(torch.zeros(2, 3)), torch.arange(3.0).expand(2, 3))
