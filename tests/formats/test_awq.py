"""AWQ (AutoAWQ GEMM layout) checkpoints read by qcompiler.load.

Packed by the test after AutoAWQ's ``WQLinear_GEMM.from_linear`` (awq/modules/linear/gemm.py,
casper-hansen/AutoAWQ, read for this test; the same order is GPTQModel's ``AWQ_ORDER``): ``qweight`` int32 [in, out/8],
word j of a row holds output columns 8j + order_map[i] at bits 4i with order_map = [0,2,4,6,1,3,5,7];
``qzeros`` [in/g, out/8] packed the same way (raw zeros); ``scales`` [in/g, out];
``W = (q - z) * s``. The reference weight is that arithmetic on the test's own codes.
"""

import json

import pytest
import torch

import qcompiler
from qcompiler.formats import CheckpointFormatError, UnsupportedFormatError

from checkpoint_helpers import quantized_linears, reference_model, tiny_llama, write_checkpoint

ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]


def _awq_pack(values: torch.Tensor) -> torch.Tensor:
    """[R, N] codes -> int32 [R, N/8] in AutoAWQ's GEMM order."""
    v = values.to(torch.int64)
    words = torch.zeros(v.shape[0], v.shape[1] // 8, dtype=torch.int64)
    for col in range(words.shape[1]):
        for i in range(8):
            words[:, col] |= v[:, col * 8 + ORDER_MAP[i]] << (i * 4)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def _awq_layer(out_f, in_f, group, gen):
    group = in_f if group == -1 else group  # AutoAWQ: group_size -1 means in_features
    groups = in_f // group
    q = torch.randint(0, 16, (in_f, out_f), generator=gen)
    z = torch.randint(0, 16, (groups, out_f), generator=gen)
    s = (torch.rand(groups, out_f, generator=gen) * 0.02 + 0.005).half()
    gi = torch.arange(in_f) // group
    w = ((q - z[gi]).float() * s.float()[gi]).t()
    return {"qweight": _awq_pack(q), "qzeros": _awq_pack(z), "scales": s}, w


def _checkpoint(tmp_path, group=32, config_file=None, **cfg):
    model = tiny_llama()
    gen = torch.Generator().manual_seed(abs(group))
    replaced, ref_w = {}, {}
    for name, m in quantized_linears(model).items():
        replaced[name], ref_w[name] = _awq_layer(m.out_features, m.in_features, group, gen)
    if config_file:
        qcfg = {"w_bit": 4, "q_group_size": group, "zero_point": True, "version": "GEMM", **cfg}
    else:
        qcfg = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm", **cfg}
    return write_checkpoint(tmp_path / "awq", model, replaced, qcfg, config_file), reference_model(model, ref_w)


@pytest.mark.parametrize("group,config_file", [(32, None), (64, "quant_config.json"), (-1, None)])
def test_awq_matches_documented_dequantization(tmp_path, ids, group, config_file):
    root, ref = _checkpoint(tmp_path, group, config_file)
    qm = qcompiler.load(root)
    with torch.no_grad():
        torch.testing.assert_close(qm(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert all("w4 weight-only" in l.op and "asym" in l.op for l in qm.report().quantized)
    assert len(qm.report().quantized) == 14


@pytest.mark.parametrize("version", ["gemv", "gemv_fast", "marlin"])
def test_other_awq_layouts_are_refused(tmp_path, version):
    root, _ = _checkpoint(tmp_path, 32, version=version)
    with pytest.raises(UnsupportedFormatError, match=version):
        qcompiler.load(root)


def test_gemv_shaped_tensor_named(tmp_path):
    root, _ = _checkpoint(tmp_path, 32)
    from safetensors.torch import load_file, save_file
    sd = load_file(str(root / "model.safetensors"))
    name = "model.layers.0.mlp.gate_proj.qweight"
    sd[name] = torch.zeros(128, 64 // 8, dtype=torch.int32)  # GEMV: [N, K/8]
    save_file(sd, str(root / "model.safetensors"))
    with pytest.raises(UnsupportedFormatError, match=r"gate_proj\.qweight.*GEMV"):
        qcompiler.load(root)


def test_wrong_group_size(tmp_path):
    root, _ = _checkpoint(tmp_path, 32)
    cfg = json.loads((root / "config.json").read_text())
    cfg["quantization_config"]["group_size"] = 64
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointFormatError, match=r"qzeros.*group_size=64"):
        qcompiler.load(root)
