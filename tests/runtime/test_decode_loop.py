"""The lean decode loop gives the tokens Hugging Face ``generate()`` gives: greedy on a float model
and on qcompiler models, padded batches, end-of-sequence, minimum lengths; its CUDA-graph step on
the GPU. On the CPU the loop runs its step without a graph (same buffers, same tensor ops)."""

from __future__ import annotations

import pytest
import torch

import qcompiler
from qcompiler.runtime import DecodeLoop, DecodeLoopConfig, StepMode, TokenChoice

_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                           reason="needs a CUDA GPU: the captured decode graph runs only there")


def _hf_generate(model, ids, new, mask=None, **kw):
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, **kw)


def _prompt(batch=2, seq=7, seed=0, device="cpu"):
    return torch.randint(3, 256, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(device)


def test_greedy_equals_generate_fp32(make_tiny_hf):
    model = make_tiny_hf("llama")
    ids = _prompt()
    ref = _hf_generate(model, ids, 12, pad_token_id=2)
    out = DecodeLoop(model).generate(ids, max_new_tokens=12, choice=TokenChoice(eos=(1,), pad=2))
    assert torch.equal(out, ref)


def test_left_padded_batch_equals_generate(make_tiny_hf):
    model = make_tiny_hf("llama")
    ids = _prompt(batch=3, seq=9, seed=1)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding of different lengths
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 2)
    ref = _hf_generate(model, ids, 10, mask=mask, pad_token_id=2)
    out = DecodeLoop(model, DecodeLoopConfig(cache_bucket=64)).generate(
        ids, mask, max_new_tokens=10, choice=TokenChoice(eos=(1,), pad=2))
    assert torch.equal(out, ref)


def test_eos_pads_ended_rows_and_stops_like_generate(make_tiny_hf):
    model = make_tiny_hf("llama")
    ids = _prompt(batch=3, seq=6, seed=2)
    free = _hf_generate(model, ids, 16, pad_token_id=0)
    eos = int(free[0, 6 + 3])  # the token row 0 produces 4th: some rows end early, maybe not all
    ref = _hf_generate(model, ids, 16, pad_token_id=0, eos_token_id=eos)
    assert (ref == eos).any()
    loop = DecodeLoop(model, DecodeLoopConfig(eos_check_every=2))
    out = loop.generate(ids, max_new_tokens=16, choice=TokenChoice(eos=(eos,), pad=0))
    assert torch.equal(out, ref)
    # every row ends: the output stops at the step the last one did (eos = a token each row emits first).
    row_firsts = {int(t) for t in free[:, 6]}
    eos_all = tuple(sorted(row_firsts))
    ref = _hf_generate(model, ids, 16, pad_token_id=0, eos_token_id=list(eos_all))
    out = loop.generate(ids, max_new_tokens=16, choice=TokenChoice(eos=eos_all, pad=0))
    assert ref.shape[1] < 6 + 16 and torch.equal(out, ref)


def test_min_new_tokens_blocks_eos_like_generate(make_tiny_hf):
    model = make_tiny_hf("llama")
    ids = _prompt(batch=1, seq=5, seed=3)
    eos = int(_hf_generate(model, ids, 1, pad_token_id=0)[0, -1])  # the very first token would end it
    ref = _hf_generate(model, ids, 8, pad_token_id=0, eos_token_id=eos, min_new_tokens=4)
    out = DecodeLoop(model).generate(ids, max_new_tokens=8, min_new_tokens=4, choice=TokenChoice(eos=(eos,), pad=0))
    assert torch.equal(out, ref)


@pytest.mark.parametrize("scheme", ["w4-weight-only", "int8-outlier"])
def test_greedy_equals_generate_qcompiler(scheme, make_tiny_hf, make_token_batches):
    qm = qcompiler.compile(make_tiny_hf("llama"), scheme, make_token_batches(n=2), progress=False)
    ids = _prompt(batch=2, seq=8, seed=4)
    ref = _hf_generate(qm, ids, 10, pad_token_id=2)
    out = DecodeLoop(qm).generate(ids, max_new_tokens=10, choice=TokenChoice(eos=(1,), pad=2))
    assert torch.equal(out, ref)


def test_one_new_token_runs_only_the_prompt(make_tiny_hf):
    model = make_tiny_hf("llama")
    ids = _prompt(batch=1, seq=4)
    loop = DecodeLoop(model)
    assert torch.equal(loop.generate(ids, max_new_tokens=1), _hf_generate(model, ids, 1, pad_token_id=2))
    assert all(slot.step_fn is None for slot in loop._slots.values())  # no decode step was built


def test_compiled_step_traces_in_one_graph(make_tiny_hf):
    # The step COMPILED_CUDA_GRAPH captures: Dynamo must trace forward + token choice + buffer
    # updates with fullgraph=True (the "eager" backend checks the tracing on the CPU).
    model = make_tiny_hf("llama")
    ids = _prompt(batch=2, seq=6, seed=5)
    ref = _hf_generate(model, ids, 6, pad_token_id=2)
    torch._dynamo.reset()
    loop = DecodeLoop(model, DecodeLoopConfig(step=StepMode.COMPILED_CUDA_GRAPH, compile_backend="eager"))
    assert torch.equal(loop.generate(ids, max_new_tokens=6, choice=TokenChoice(eos=(1,), pad=2)), ref)
    assert torch.equal(loop.generate(ids, max_new_tokens=6, choice=TokenChoice(eos=(1,), pad=2)), ref)
    torch._dynamo.reset()


@_CUDA
@pytest.mark.parametrize("scheme,step", [(None, StepMode.CUDA_GRAPH), ("w4-weight-only", StepMode.CUDA_GRAPH),
                                         ("int8-outlier", StepMode.CUDA_GRAPH), (None, StepMode.COMPILED_CUDA_GRAPH),
                                         ("w4-weight-only", StepMode.COMPILED_CUDA_GRAPH)],
                         ids=lambda v: getattr(v, "value", str(v)))
def test_cuda_graph_loop_matches_generate(scheme, step, make_tiny_hf, make_token_batches):
    model = make_tiny_hf("llama").half().cuda()
    if scheme is not None:
        cal = [{k: v.cuda() for k, v in b.items()} for b in make_token_batches(n=2)]
        model = qcompiler.compile(model, scheme, cal, backend="triton", progress=False)
        qcompiler.runtime.disable_fast_generate(model)  # the reference: transformers' eager generate()
    ids = _prompt(batch=2, seq=9, device="cuda")
    ref = _hf_generate(model, ids, 12, pad_token_id=2)
    loop = DecodeLoop(model, DecodeLoopConfig(step=step))
    runs = [loop.generate(ids, max_new_tokens=12, choice=TokenChoice(eos=(1,), pad=2)) for _ in range(2)]
    assert loop.last_mode is step and loop._slots and all(s.graph is not None for s in loop._slots.values())
    assert torch.equal(runs[0], runs[1])  # the replayed graph starts from the new prompt each call
    # fp16 kernels round differently from eager generate() (mask layout, cache length): the first
    # tokens must agree; greedy may drift later on near-ties.
    assert torch.equal(runs[0][:, :9 + 4], ref[:, :9 + 4])
    torch._dynamo.reset()


def test_auto_step_policy(make_tiny_hf):
    # AUTO: eager off CUDA; on CUDA a compiled step per slot up to max_compiled_slots, then the
    # uncompiled graph; none once compiling has failed. (The policy only: no CUDA needed.)
    loop = DecodeLoop(make_tiny_hf("llama"), DecodeLoopConfig(max_compiled_slots=2))
    cuda = torch.device("cuda")
    assert loop.step_mode(torch.device("cpu")) is StepMode.EAGER
    assert loop.step_mode(cuda) is StepMode.COMPILED_CUDA_GRAPH
    for key in ("a", "b"):
        loop._slots[key] = type("S", (), {"mode": StepMode.COMPILED_CUDA_GRAPH})()
    assert loop.step_mode(cuda) is StepMode.CUDA_GRAPH
    loop._slots.clear()
    loop.compile_failure = "RuntimeError: x"
    assert loop.step_mode(cuda) is StepMode.CUDA_GRAPH
    explicit = DecodeLoop(make_tiny_hf("llama"), DecodeLoopConfig(step=StepMode.CUDA_GRAPH))
    assert explicit.step_mode(cuda) is StepMode.CUDA_GRAPH and explicit.step_mode(torch.device("cpu")) is StepMode.EAGER


def test_auto_step_runs_eager_on_cpu(make_tiny_hf):
    model = make_tiny_hf("llama")
    ids = _prompt(batch=2, seq=6, seed=7)
    loop = DecodeLoop(model)
    out = loop.generate(ids, max_new_tokens=5, choice=TokenChoice(eos=(1,), pad=2))
    assert loop.last_mode is StepMode.EAGER
    assert torch.equal(out, _hf_generate(model, ids, 5, pad_token_id=2))


@_CUDA
def test_auto_step_compiles_on_cuda_and_falls_back_when_compiling_fails(make_tiny_hf):
    model = make_tiny_hf("llama").half().cuda()
    ids = _prompt(batch=1, seq=7, device="cuda")
    ref = _hf_generate(model, ids, 8, pad_token_id=2)
    loop = DecodeLoop(model)
    out = loop.generate(ids, max_new_tokens=8, choice=TokenChoice(eos=(1,), pad=2))
    assert loop.last_mode is StepMode.COMPILED_CUDA_GRAPH and torch.equal(out[:, :7 + 4], ref[:, :7 + 4])
    torch._dynamo.reset()
    broken = DecodeLoop(model, DecodeLoopConfig(compile_backend="qcompiler_no_such_backend"))
    with pytest.warns(RuntimeWarning, match="compiling the decode step failed"):
        out = broken.generate(ids, max_new_tokens=8, choice=TokenChoice(eos=(1,), pad=2))
    assert broken.last_mode is StepMode.CUDA_GRAPH and broken.compile_failure
    assert torch.equal(out[:, :7 + 4], ref[:, :7 + 4])
    torch._dynamo.reset()
