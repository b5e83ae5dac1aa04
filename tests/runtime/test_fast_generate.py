"""The fast generate path (static KV cache, decode under CUDA graphs, compiled prefill): on by
default for backend="triton" on CUDA, a no-op on the CPU, and equal to the eager path."""

from __future__ import annotations

import pytest
import torch
from static_decode import prompt_then_token, static_step

import qcompiler
from qcompiler.runtime import FastGenerateConfig, disable_fast_generate, enable_fast_generate, fast_generate_status

_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                           reason="needs a CUDA GPU: CUDA graphs and the compiled Triton kernels run only there")


def _greedy(model, ids, new=6):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=2)


def test_cpu_model_keeps_the_eager_path(make_tiny_hf, make_token_batches):
    qm = qcompiler.compile(make_tiny_hf("llama"), "w8-weight-only", make_token_batches(n=2), progress=False)
    why = enable_fast_generate(qm)
    assert "stays eager" in why and not fast_generate_status(qm)
    assert qm.model.generation_config.cache_implementation is None


def test_fast_generate_equals_eager_and_undoes(make_tiny_hf, make_token_batches):
    # all_devices + Dynamo's eager backend: the same dispatch and static cache, traced on the CPU.
    qm = qcompiler.compile(make_tiny_hf("llama"), "int8-outlier", make_token_batches(n=2), progress=False)
    ids = torch.randint(3, 256, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _greedy(qm, ids)
        # lean_decode=None: this test is about transformers' generate() with the static cache and compiled prompt.
        assert enable_fast_generate(qm, FastGenerateConfig(all_devices=True, backend="eager",
                                                           lean_decode=None)).startswith("generate()")
        assert fast_generate_status(qm) and qm.model.generation_config.cache_implementation == "static"
        assert torch.equal(_greedy(qm, ids), ref)
        assert torch.equal(_greedy(qm, ids), ref)  # the second call reuses the cache and the compiled prompt
        assert disable_fast_generate(qm) and not fast_generate_status(qm)
        assert "forward" not in qm.model.__dict__ and "get_compiled_call" not in qm.model.__dict__
        assert qm.model.generation_config.cache_implementation is None
        assert torch.equal(_greedy(qm, ids), ref)
    torch._dynamo.reset()


SCHEMES = ["w4-weight-only", "nf4", "w8-weight-only", "gptq-w4", "int8-outlier", "w8a8-smoothquant"]


@_CUDA
@pytest.mark.parametrize("scheme", SCHEMES)
def test_cudagraph_decode_step(scheme, make_tiny_hf, make_token_batches):
    # Regression: w4-weight-only's split-K GEMV kept its workspace in a module-level cache, which
    # CUDA graph trees found in their pool untracked ("Detected 2 tensor(s) in the cudagraph pool
    # not tracked as outputs"). Warm-up, record and replays of a static-cache decode step.
    model = make_tiny_hf("llama").half().cuda()
    cal = [{k: v.cuda() for k, v in b.items()} for b in make_token_batches(n=2)]
    qm = qcompiler.compile(model, scheme, cal, backend="triton", progress=False)
    assert fast_generate_status(qm) and any(n.startswith("generate()") for n in qm.report().notes)
    eager, graphed = static_step(qm), static_step(qm)
    step = torch.compile(graphed, mode="reduce-overhead", fullgraph=True)
    torch._dynamo.utils.counters.clear()
    ids = torch.randint(3, 256, (1, 13), generator=torch.Generator().manual_seed(0)).cuda()
    pos = torch.arange(13, device="cuda")
    with torch.no_grad():
        eager(ids[:, :8], pos[:8])
        graphed(ids[:, :8], pos[:8])  # fills (and allocates, eagerly) the cache the graph replays on
        for t in range(8, 13):  # the first calls warm up and record, the later ones replay
            ref = eager(ids[:, t:t + 1], pos[t:t + 1])
            torch.compiler.cudagraph_mark_step_begin()
            out = step(ids[:, t:t + 1], pos[t:t + 1]).clone()
            # Same kernels for the linears; Inductor fuses the float glue in another order.
            assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 1e-2, t
    # The graph really ran as a CUDA graph (a skip would hide a pool problem and keep host overhead).
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0
    torch._dynamo.reset()


@_CUDA
def test_fast_generate_on_cuda_matches_eager(make_tiny_hf, make_token_batches):
    model = make_tiny_hf("llama").half().cuda()
    cal = [{k: v.cuda() for k, v in b.items()} for b in make_token_batches(n=2)]
    qm = qcompiler.compile(model, "w4-weight-only", cal, backend="triton", progress=False)
    ids = torch.randint(3, 256, (1, 9), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        fast = [_greedy(qm, ids, 12) for _ in range(2)]
        disable_fast_generate(qm)
        eager = _greedy(qm, ids, 12)
    assert torch.equal(fast[0], fast[1])
    assert torch.equal(fast[0][:, :12], eager[:, :12])  # greedy may drift later within kernel rounding
    torch._dynamo.reset()


def test_first_prompt_of_a_fresh_cache_runs_eager(make_tiny_hf):
    # transformers marks the static cache's tensors static addresses only when it allocates them
    # eagerly; allocated inside a compiled prompt they are not, and CUDA graph trees then skip the
    # decode graph ("mutated inputs"). So a fresh cache's prompt runs eager, later ones compiled.
    from transformers import StaticCache

    from qcompiler.runtime.fast_generate import _prefill_dispatch

    model = make_tiny_hf("llama")
    calls = []
    dispatch = _prefill_dispatch(lambda *a, **k: calls.append("eager") or model.forward(*a, **k),
                                 lambda *a, **k: calls.append("compiled") or model.forward(*a, **k))
    cache = StaticCache(config=model.config, max_cache_len=16)
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dispatch(input_ids=ids, past_key_values=cache, use_cache=True)
        assert calls == ["eager"]
        keys = cache.layers[0].keys
        assert getattr(keys, "_dynamo_static_input_type", None) is not None  # what CUDA graphs need
        cache.reset()
        dispatch(input_ids=ids, past_key_values=cache, use_cache=True)
        dispatch(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)  # one token: eager
        dispatch(input_ids=ids)  # no static cache (a direct call): eager
    assert calls == ["eager", "compiled", "eager", "eager"]
