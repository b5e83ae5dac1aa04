"""A compiled Hugging Face model with backend="triton" generates on the GPU."""

import pytest
import torch

import qcompiler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: the Triton kernels run compiled only there")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_with_triton_backend(arch, make_tiny_hf, make_token_batches):
    model = make_tiny_hf(arch).half().cuda()
    cal = [{k: v.cuda() for k, v in b.items()} for b in make_token_batches(n=3)]
    qm = qcompiler.compile(model, "int8-outlier", cal, backend="triton", progress=False)
    lowerings = {r.lowering for r in qm.report().quantized}
    assert all(lw.startswith("triton") for lw in lowerings), lowerings

    ids = torch.randint(3, 256, (2, 24), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
        out = qm(input_ids=ids).logits.float()
    assert ((out - ref).norm() / ref.norm()).item() < 0.03

    prompt = ids[:1, :6]
    gen = qm.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    assert gen.shape == (1, 22) and torch.equal(gen[:, :6], prompt)
    ref_gen = model.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    assert torch.equal(gen[:, :8], ref_gen[:, :8])  # greedy may drift later, within quantization error
