"""w8a8-smoothquant through ``qcompiler.compile``: HF causal LMs (region by region, where the
norms stay outside the graphs: q/k/v share one scale folded into the norm) and the real MiniLM."""

import pytest
import torch

import qcompiler


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_lm(arch, make_tiny_hf, make_token_batches):
    model = make_tiny_hf(arch)
    qm = qcompiler.compile(model, "w8a8-smoothquant", make_token_batches(n=2), verify=True, progress=False)
    rep = qm.report()
    assert len(rep.quantized) == len(rep.layers)
    # smooth="foldable": smoothed where 1/s folds, the others say why not
    assert all("+smooth:" in r.op or any(n.startswith("not smoothed: nothing absorbs") for n in r.notes)
               for r in rep.quantized)
    assert any("+smooth:" in r.op for r in rep.quantized)
    ids = torch.randint(3, 256, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, qm(input_ids=ids).logits
    assert ((out - ref).norm() / ref.norm()).item() < 0.03  # int8 W8A8 on random weights: ~1%
    assert qm.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, min_new_tokens=5).shape == (1, 9)


def test_minilm_embeddings(minilm_2l, embedding_cosine):
    qm = qcompiler.compile(minilm_2l["model"], "w8a8-smoothquant", minilm_2l["cal"], progress=False, smooth="all")
    cos = embedding_cosine(qm)
    print(f"w8a8-smoothquant: cosine mean {cos.mean():.5f} min {cos.min():.5f}")
    assert cos.mean() >= 0.999 and cos.min() >= 0.998
    # post-LN BERT: every LayerNorm output also feeds a residual, so nothing folds
    assert {r.op for r in qm.report().quantized} == {"int8 rowxchannel +smooth:mul"}
