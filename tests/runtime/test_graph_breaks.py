"""Every scheme's compiled model traces through Dynamo without a graph break, inside a Hugging Face
decoder with a static KV cache (what ``generate()`` compiles), and the traced model computes what
the eager one does. Dynamo's "eager" backend checks the tracing; "aot_eager" also runs the ops'
fake implementations through AOTAutograd, so a fake whose shape or dtype differs from the real
op's output fails here. The Triton ops run in the CPU interpreter."""

from __future__ import annotations

import pytest
import torch
from static_decode import prompt_then_token, static_step

import qcompiler

SCHEMES = ["int8-outlier", "w8a8-smoothquant", "w8-weight-only", "w4-weight-only", "gptq-w4", "nf4"]


def _compiled(make_tiny_hf, make_token_batches, scheme, backend, dtype):
    model = make_tiny_hf("llama").to(dtype)
    return qcompiler.compile(model, scheme, make_token_batches(n=2), backend=backend, progress=False)


def _check_traces_clean(qm, dynamo_backend, explain=True):
    prompt, token = prompt_then_token()
    eager_step, traced_step = static_step(qm), static_step(qm)
    with torch.no_grad():
        if explain:
            explained = torch._dynamo.explain(static_step(qm))(*token)
            assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
            assert explained.graph_count == 1
        # fullgraph=True: any graph break is an error.
        compiled = torch.compile(traced_step, backend=dynamo_backend, fullgraph=True)
        for call in (prompt, token):  # prefill (8 rows), then one decode step (M = 1)
            ref = eager_step(*call)
            out = compiled(*call)
            # aot_eager may reorder float reductions (decompositions): float32 rounding, no more.
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_reference_ops_trace_without_graph_breaks(scheme, make_tiny_hf, make_token_batches):
    qm = _compiled(make_tiny_hf, make_token_batches, scheme, "eager", torch.float32)
    _check_traces_clean(qm, "eager")


@pytest.mark.parametrize("scheme", ["int8-outlier"])  # the tuple-returning quantize op and int8 GEMM (slow: ~1 min)
def test_fake_impls_match_under_aot_eager(scheme, make_tiny_hf, make_token_batches):
    qm = _compiled(make_tiny_hf, make_token_batches, scheme, "eager", torch.float32)
    _check_traces_clean(qm, "aot_eager", explain=False)


@pytest.mark.parametrize("scheme", ["int8-outlier", "w4-weight-only"])
def test_triton_ops_trace_without_graph_breaks(scheme, make_tiny_hf, make_token_batches):
    # The Library-defined qcompiler_triton ops (kernels in the interpreter: slow, so two schemes:
    # the int8 GEMM / weight-only-int8 dispatch and the split-K weight-only GEMV).
    qm = _compiled(make_tiny_hf, make_token_batches, scheme, "triton", torch.float16)
    targets = {str(n.target) for gm in qm.graph_modules.values() for n in gm.graph.nodes}
    assert any(t.startswith("qcompiler_triton.") for t in targets), targets
    _check_traces_clean(qm, "eager", explain=False)
