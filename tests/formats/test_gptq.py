"""GPTQ (AutoGPTQ / GPTQModel v1 layout) checkpoints read by qcompiler.load.

The test packs its own checkpoints following AutoGPTQ's ``QuantLinear.pack``
(auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py, AutoGPTQ/AutoGPTQ): ``qweight[row] |=
intweight[j] << bits * (j - i)`` along the input dim, ``zeros -= 1`` then packed along the output
dim the same way, ``scales`` [groups, out] fp16, ``g_idx`` [in]; its ``forward`` dequantizes
``scales[g] * (q - (zeros + 1))``. The reference weight here is that arithmetic on the test's own
codes, not qcompiler's reader.
"""

import pytest
import torch

import qcompiler
from qcompiler.formats import CheckpointFormatError, UnsupportedFormatError

from checkpoint_helpers import quantized_linears, reference_model, tiny_llama, write_checkpoint


def _pack_along(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """AutoGPTQ's loop: word r holds values r*per .. r*per+per-1 of ``dim``, value j at bit bits*j."""
    per = 32 // bits
    v = values.to(torch.int64)
    if dim == 1:
        v = v.t()
    words = torch.zeros(v.shape[0] // per, v.shape[1], dtype=torch.int64)
    for r in range(words.shape[0]):
        for j in range(per):
            words[r] |= v[r * per + j] << (bits * j)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)  # uint32 bits as int32
    return words if dim == 0 else words.t().contiguous()


def _gptq_layer(out_f, in_f, bits, group, desc_act, sym, gen):
    g = in_f if group == -1 else group
    groups = -(-in_f // g)
    q = torch.randint(0, 2 ** bits, (in_f, out_f), generator=gen)                     # [K, N]
    zeros = (torch.full((groups, out_f), 2 ** (bits - 1)) if sym
             else torch.randint(1, 2 ** bits, (groups, out_f), generator=gen))        # v1 cannot store 0
    scales = (torch.rand(groups, out_f, generator=gen) * 0.02 + 0.005).half()
    g_idx = torch.arange(in_f) // g
    if desc_act:
        g_idx = g_idx[torch.randperm(in_f, generator=gen)]                            # act order
    w = (scales.float()[g_idx] * (q - zeros[g_idx]).float()).t()                      # [N, K]
    tensors = {"qweight": _pack_along(q, bits, 0), "qzeros": _pack_along(zeros - 1, bits, 1),
               "scales": scales, "g_idx": g_idx.to(torch.int32)}
    return tensors, w


def _checkpoint(tmp_path, bits=4, group=32, desc_act=False, sym=True, config_file=None, **extra):
    model = tiny_llama()
    gen = torch.Generator().manual_seed(bits * 100 + group + desc_act * 7 + sym)
    replaced, ref_w = {}, {}
    for name, m in quantized_linears(model).items():
        replaced[name], ref_w[name] = _gptq_layer(m.out_features, m.in_features, bits, group, desc_act, sym, gen)
    qcfg = {"bits": bits, "group_size": group, "desc_act": desc_act, "sym": sym, **extra}
    if config_file is None:
        qcfg["quant_method"] = "gptq"
    root = write_checkpoint(tmp_path / "ckpt", model, replaced, qcfg, config_file)
    return root, reference_model(model, ref_w), replaced


@pytest.mark.parametrize("bits,group,desc_act,sym", [(4, 32, False, True), (4, 32, True, False),
                                                     (8, -1, False, False), (8, 32, True, True),
                                                     (4, -1, True, True)])
def test_gptq_matches_documented_dequantization(tmp_path, ids, bits, group, desc_act, sym):
    root, ref, _ = _checkpoint(tmp_path, bits, group, desc_act, sym)
    qm = qcompiler.load(root)
    with torch.no_grad():
        out, want = qm(input_ids=ids).logits, ref(input_ids=ids).logits
    # same weights, float32 either way: only the summation order differs
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    rep = qm.report()
    assert len(rep.quantized) == 14 and all(f"w{bits} weight-only" in l.op for l in rep.quantized)
    assert qm.generate(ids[:1, :4], max_new_tokens=5, do_sample=False).shape == (1, 9)


def test_quantize_config_json(tmp_path, ids):
    root, ref, _ = _checkpoint(tmp_path, 4, 32, False, True, config_file="quantize_config.json")
    qm = qcompiler.load(root)
    with torch.no_grad():
        torch.testing.assert_close(qm(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_wrong_bits_names_the_tensor(tmp_path):
    root, _, _ = _checkpoint(tmp_path, 4, 32)
    import json
    cfg = json.loads((root / "config.json").read_text())
    cfg["quantization_config"]["bits"] = 8
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointFormatError, match=r"model\.layers\.0\.self_attn\.q_proj\.qweight.*bits=8"):
        qcompiler.load(root)


def test_wrong_group_size_names_the_tensor(tmp_path):
    root, _, _ = _checkpoint(tmp_path, 4, 32)
    import json
    cfg = json.loads((root / "config.json").read_text())
    cfg["quantization_config"]["group_size"] = 16
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointFormatError, match=r"qzeros.*group_size=16"):
        qcompiler.load(root)


def test_missing_g_idx_with_desc_act(tmp_path):
    model = tiny_llama()
    gen = torch.Generator().manual_seed(0)
    replaced = {}
    for name, m in quantized_linears(model).items():
        t, _ = _gptq_layer(m.out_features, m.in_features, 4, 32, True, True, gen)
        del t["g_idx"]
        replaced[name] = t
    root = write_checkpoint(tmp_path / "c", model, replaced,
                            {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": True})
    with pytest.raises(CheckpointFormatError, match=r"g_idx' is missing; desc_act=true"):
        qcompiler.load(root)


@pytest.mark.parametrize("extra,match", [({"checkpoint_format": "gptq_v2"}, "gptq_v2"),
                                         ({"checkpoint_format": "marlin"}, "marlin"),
                                         ({"is_marlin_format": True}, "marlin")])
def test_unsupported_variants_are_refused(tmp_path, extra, match):
    root, _, _ = _checkpoint(tmp_path, 4, 32, **extra)
    with pytest.raises(UnsupportedFormatError, match=match):
        qcompiler.load(root)


def test_loaded_checkpoint_exports_to_onnx(tmp_path, ids):
    """An act-order GPTQ checkpoint (index_select + weight_only_linear) through ONNX Runtime."""
    from qcompiler.backends.onnxruntime import OrtModule
    root, _, _ = _checkpoint(tmp_path, 4, 32, True, False)
    qm = qcompiler.load(root)
    example = {"input_ids": ids[:1, :7], "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    out = qcompiler.export_onnx(qm, example, tmp_path / "gptq.onnx")
    assert len(out.lowering) == 14  # the quantized linears (lm_head stays float)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = qm(input_ids=ids, attention_mask=mask, use_cache=False).logits
        got = OrtModule(out, ["CPUExecutionProvider"])(input_ids=ids, attention_mask=mask).logits
    # float32 in both runtimes, the same codes: only the summation order differs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_loaded_checkpoint_runs_on_triton_kernels(tmp_path):
    """backend="triton": the same checkpoint on the Triton kernels (the interpreter on a CPU machine)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    root, _, _ = _checkpoint(tmp_path, 4, 32, True, False)
    eager = qcompiler.load(root, device=device, dtype=torch.float16)  # the kernels take fp16/bf16 activations
    tri = qcompiler.load(root, backend="triton", device=device, dtype=torch.float16)
    assert all(l.lowering.startswith("triton") for l in tri.report().quantized), \
        {l.lowering for l in tri.report().quantized}
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        a, b = tri(input_ids=ids).logits.float(), eager(input_ids=ids).logits.float()
    # the same codes; the kernel multiplies in fp16, the reference in fp32: fp16 rounding only
    assert ((a - b).norm() / b.norm()).item() < 1e-2
