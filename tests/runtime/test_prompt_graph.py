"""Captured prompts (``qcompiler.runtime.prompt_graph``): a prompt shape runs uncaptured the first
time, is captured the second, replayed after; the replayed prompt gives the logits and tokens of
the uncaptured one, for fp16 and for qcompiler's Triton prefill kernels; a failed capture warns and
falls back. Capturing needs CUDA; off CUDA the policy returns "run it yourself" every time."""

from __future__ import annotations

import pytest
import torch

import qcompiler
from qcompiler.runtime import DecodeLoopConfig, FastGenerateConfig, TokenChoice, enable_fast_generate
from qcompiler.runtime.prompt_graph import PromptGraphs

_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: CUDA graph capture")


def test_off_cuda_never_captures():
    graphs = PromptGraphs(limit=2)
    ids = torch.zeros(1, 8, dtype=torch.long)
    calls = []
    for _ in range(3):
        assert graphs.run(lambda i, p: calls.append(1), ids, ids, cache=None) is None
    assert not graphs.graphs and not calls  # the caller runs the forward itself


def _loop(model):
    hf = model._modules["model"] if hasattr(model, "program") else model
    return hf.__dict__["_qcompiler_lean_decode"]["loop"]


def _llama(hidden=256):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(cfg).half().cuda().eval()


def _fast(model, prompt_graphs):
    enable_fast_generate(model, FastGenerateConfig(lean_decode=DecodeLoopConfig(prompt_graphs=prompt_graphs)))
    return model


def _generate(model, ids, new=6):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                              pad_token_id=2)


@_CUDA
@pytest.mark.parametrize("scheme", [None, "w4-weight-only", "int8-outlier"])
def test_replayed_prompt_equals_uncaptured(scheme):
    base = _llama()
    g = torch.Generator().manual_seed(1)
    if scheme is not None:
        cal = [{"input_ids": torch.randint(3, 512, (1, 64), generator=g).cuda()} for _ in range(2)]
        base = qcompiler.compile(base, scheme, cal, backend="triton", progress=False)
    ids = torch.randint(3, 512, (1, 300), generator=g).cuda()  # M = 300: the prefill kernels, not the GEMVs
    other = torch.randint(3, 512, (1, 40), generator=g).cuda()
    ref = _fast(base, prompt_graphs=0)  # prompts never captured
    off = [_generate(ref, ids), _generate(ref, other)]
    assert not any(s.prompts.graphs for s in _loop(ref)._slots.values())
    model = _fast(base, prompt_graphs=2)  # the same model, its fast path set up again
    runs = [_generate(model, ids) for _ in range(3)] + [_generate(model, other) for _ in range(3)]
    loop = _loop(model)
    assert loop.prompt_graph_failure is None
    captured = {k for s in loop._slots.values() for k in s.prompts.graphs}
    assert (1, 40) in captured  # the last slot's shapes (the slot of the 300-token prompt was replaced)
    for run in runs[:3]:
        assert torch.equal(run, off[0])  # run 1 uncaptured, 2 captured + replayed, 3 replayed
    for run in runs[3:]:
        assert torch.equal(run, off[1])
    torch._dynamo.reset()


@_CUDA
def test_replayed_logits_equal_uncaptured():
    model = _fast(_llama(), prompt_graphs=1)
    loop = _loop(model)
    ids = torch.randint(3, 512, (2, 64), generator=torch.Generator().manual_seed(2)).cuda()
    seen = []
    real = loop._advance
    loop._advance = lambda slot, logits: (seen.append(logits.float().clone()), real(slot, logits))[1]
    for _ in range(3):  # 1: eager (the cache allocates), 2: captured and replayed, 3: replayed
        _generate(model, ids, new=1)
    slot = next(iter(loop._slots.values()))
    assert tuple(ids.shape) in slot.prompts.graphs
    slot.prompts.limit = 0  # 4: the same compiled forward, uncaptured
    _generate(model, ids, new=1)
    torch.testing.assert_close(seen[2], seen[1], rtol=0, atol=0)  # one graph, replayed twice
    torch.testing.assert_close(seen[1], seen[3], rtol=2e-3, atol=2e-3)  # same kernels (cuBLAS may pick others)
    torch._dynamo.reset()


class _Cache:
    layers = ()

    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1


@_CUDA
def test_failed_capture_warns_and_stops_capturing():
    graphs, cache = PromptGraphs(limit=2), _Cache()
    ids = torch.ones(1, 8, dtype=torch.long, device="cuda")

    def forward(i, p):
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("injected")
        return i.float() * 2

    assert graphs.run(forward, ids, ids, cache) is None  # first sight: the caller runs it
    with pytest.warns(RuntimeWarning, match="capturing the prompt's forward failed.*injected"):
        assert graphs.run(forward, ids, ids, cache) is None
    assert "injected" in graphs.failure and not graphs.graphs and cache.resets >= 1
    assert graphs.run(forward, ids, ids, cache) is None  # no further attempts


@_CUDA
def test_loop_falls_back_when_capture_fails(monkeypatch):
    model = _fast(_llama(), prompt_graphs=2)
    ids = torch.randint(3, 512, (1, 32), generator=torch.Generator().manual_seed(3)).cuda()
    ref = _fast(_llama(), prompt_graphs=0)
    want = _generate(ref, ids, new=1)  # prompts only: no decode step to capture

    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("no capture today")

    monkeypatch.setattr(torch.cuda, "graph", Broken)
    with pytest.warns(RuntimeWarning, match="capturing the prompt's forward failed.*no capture today"):
        outs = [_generate(model, ids, new=1) for _ in range(3)]
    monkeypatch.undo()
    loop = _loop(model)
    assert "no capture today" in (loop.prompt_graph_failure or "")
    assert all(torch.equal(o, want) for o in outs)
    torch._dynamo.reset()
