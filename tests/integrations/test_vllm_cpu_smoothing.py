"""vLLM CPU serving qcompiler's compressed-tensors exports of the smoothing schemes:
w8a8-smoothquant and awq-w4 with its scale search (smooth="foldable": the scales fold into the
RMSNorms, so the export is plain int-quantized / pack-quantized). Same harness as
test_vllm_cpu.py (runs by default; ``QC_SKIP_VLLM=1`` skips, and a failed install skips with the reason)."""

import torch

import pytest

import qcompiler

from test_vllm_cpu import (N_TOKENS, _log, _needs_int4_kernel, _needs_vllm, _pick_prompt, _serve_and_complete,
                           _skip_if_int8_gemm_is_off, _tiny_llama, _tokenizer)


@pytest.mark.parametrize("scheme,opts", [("w8a8-smoothquant", {"smooth": "foldable"}),
                                         ("awq-w4", {"group_size": 32})])  # awq: smooth="foldable" by default
def test_vllm_cpu_serves_smoothed_exports(tmp_path, scheme, opts):
    exe = _needs_vllm()
    if scheme == "awq-w4":
        _needs_int4_kernel(exe)
    cal = [{"input_ids": torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(i))} for i in range(2)]
    qm = qcompiler.compile(_tiny_llama(), scheme, cal, progress=False, **opts)
    folded = [r.layer for r in qm.report().layers if "+smooth:outer-norm" in r.op or
              any("(shared by" in n for n in r.notes)]
    assert folded, "nothing was smoothed into a norm"
    out = qcompiler.save(qm, tmp_path / "export", format="compressed-tensors")
    _tokenizer(out, 256)
    prompt, want, agree = _pick_prompt(qm)
    got = _serve_and_complete(exe, out, prompt, _log(tmp_path, scheme))
    if scheme == "w8a8-smoothquant":
        _skip_if_int8_gemm_is_off(exe, got)
    print(f"{scheme}: vLLM {got} qcompiler {want}; tokens before the first near-tie: {agree}; "
          f"scales folded into norms for {len(folded)} layers")
    assert agree >= 1, "every candidate prompt starts with a near-tie"
    assert got[:agree] == want[:agree]
