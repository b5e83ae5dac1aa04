"""gptq-w4, gptq-w8 and awq-w4 through ``qcompiler.compile``: HF causal LMs (regions separated by
eager attention code, calibrated one region at a time) and the real MiniLM (2-layer cut)."""

import pytest
import torch

import qcompiler
from qcompiler.graph.nodes import is_linear

WO = torch.ops.qcompiler.weight_only_linear.default
# relative logit error on random-weight tiny models: int8 ~1%, 4-bit ~15% (as for RTN)
MAX_REL = {"gptq-w4": 0.3, "awq-w4": 0.3, "gptq-w8": 0.03}


def test_listed():
    assert {"gptq-w4", "gptq-w8", "awq-w4"} <= set(qcompiler.list_schemes())


@pytest.mark.parametrize("scheme,arch", [("gptq-w4", "gpt2"), ("gptq-w4", "llama"), ("awq-w4", "gpt2"),
                                         ("awq-w4", "llama"), ("gptq-w8", "llama")])
def test_causal_lm(scheme, arch, make_tiny_hf, make_token_batches):
    model = make_tiny_hf(arch)
    qm = qcompiler.compile(model, scheme, make_token_batches(n=2), verify=True, progress=False)
    rep = qm.report()
    ops = [n for gm in qm.graph_modules.values() for n in gm.graph.nodes
           if n.op == "call_function" and n.target is WO]
    assert len(rep.quantized) == len(rep.layers) == len(ops) > 5
    assert not any(is_linear(n) for gm in qm.graph_modules.values() for n in gm.graph.nodes)
    tag = scheme.split("-")[0] + ":"
    assert all(any(n.startswith(tag) for n in r.notes) for r in rep.layers)  # every layer went through it
    ids = torch.randint(3, 256, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, qm(input_ids=ids).logits
    assert ((out - ref).norm() / ref.norm()).item() < MAX_REL[scheme]
    gen = qm.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert gen.shape == (1, 9)


@pytest.mark.parametrize("scheme,opts,min_mean", [
    # measured on this cut: gptq-w4 0.9924 (w4 RTN, same symmetric grid: 0.9889);
    # awq-w4 0.9952 (w4 RTN, same asymmetric grid: 0.9920). Each bound sits between the two.
    ("gptq-w4", {"block_size": 32}, 0.991),
    ("awq-w4", {"n_grid": 10}, 0.994),
])
def test_minilm_embeddings_beat_round_to_nearest(minilm_2l, embedding_cosine, scheme, opts, min_mean):
    """Real weights, sentences the calibration never saw."""
    qm = qcompiler.compile(minilm_2l["model"], scheme, minilm_2l["cal"], progress=False, **opts)
    cos = embedding_cosine(qm)
    print(f"{scheme}: cosine mean {cos.mean():.5f} min {cos.min():.5f}")
    assert cos.mean() > min_mean
