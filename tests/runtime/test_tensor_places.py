"""Captured graphs read the tensors they were captured with: after a weight, buffer or submodule is
replaced (not changed in place) the decode loop drops its slots and builds them again, so the next
tokens are the new weights' tokens, not a replay over the old (or freed) memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qcompiler.runtime import DecodeLoop, DecodeLoopConfig, StepMode, TokenChoice
from qcompiler.runtime.tensor_places import TensorPlaces

_CHOICE = TokenChoice(eos=(1,), pad=2)


def _prompt(device="cpu"):
    return torch.randint(3, 256, (2, 9), generator=torch.Generator().manual_seed(0)).to(device)


def _other_weights(model):
    torch.manual_seed(5)
    return {k: v + torch.randn_like(v) * v.float().std().item() if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


def test_moved_sees_replaced_tensors_and_modules_not_in_place_changes():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    places = TensorPlaces(model)
    assert places.moved()  # nothing recorded yet
    places.record()
    assert not places.moved()
    with torch.no_grad():
        model[0].weight.mul_(2)  # in place: the graph sees it
    model.load_state_dict(model.state_dict())  # copies in place
    assert not places.moved()
    model[0].weight.data = torch.zeros(4, 4)  # same Parameter, new storage
    assert places.moved()
    places.record()
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    assert places.moved()
    places.record()
    model[1] = nn.LayerNorm(4)  # a new submodule
    assert places.moved()


@pytest.mark.parametrize("assign", [False, True], ids=["in-place", "assign"])
def test_loop_rebuilds_its_slots_only_when_weights_were_replaced(make_tiny_hf, assign):
    model = make_tiny_hf("llama")
    ids = _prompt()
    loop = DecodeLoop(model)
    loop.generate(ids, max_new_tokens=6, choice=_CHOICE)
    slot = next(iter(loop._slots.values()))
    model.load_state_dict(_other_weights(model), assign=assign)
    out = loop.generate(ids, max_new_tokens=6, choice=_CHOICE)
    assert torch.equal(out, DecodeLoop(model).generate(ids, max_new_tokens=6, choice=_CHOICE))
    assert (next(iter(loop._slots.values())) is slot) is (not assign)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: captured decode graphs run only there")
def test_replaced_weights_are_recaptured_on_cuda(make_tiny_hf):
    model = make_tiny_hf("llama").half().cuda()
    ids = _prompt("cuda")
    loop = DecodeLoop(model, DecodeLoopConfig(step=StepMode.CUDA_GRAPH))
    before = loop.generate(ids, max_new_tokens=8, choice=_CHOICE)
    model.load_state_dict(_other_weights(model), assign=True)
    want = DecodeLoop(model, DecodeLoopConfig(step=StepMode.CUDA_GRAPH)).generate(ids, max_new_tokens=8, choice=_CHOICE)
    out = loop.generate(ids, max_new_tokens=8, choice=_CHOICE)
    assert not torch.equal(want, before)  # the new weights give other tokens
    assert torch.equal(out, want)
