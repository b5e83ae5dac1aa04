"""compressed-tensors: qcompiler writes it with the compressed-tensors library, transformers loads
it (the library's own decompression), and qcompiler's reader reads it back; all three agree."""

import pytest
import torch

import qcompiler
from qcompiler.formats import ExportFormatError

from checkpoint_helpers import tiny_llama

CAL = [{"input_ids": torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(i))} for i in range(2)]


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.mark.parametrize("scheme,opts,fmt", [("w4-weight-only", {"group_size": 32}, "pack-quantized"),
                                             ("w8-weight-only", {}, "pack-quantized"),
                                             ("gptq-w4", {"group_size": 32}, "pack-quantized"),
                                             ("int8-vectorwise", {}, "int-quantized")])
def test_export_loads_in_transformers_and_reads_back(tmp_path, llama, ids, scheme, opts, fmt):
    from transformers import AutoModelForCausalLM
    qm = qcompiler.compile(llama, scheme, CAL, progress=False, **opts)
    out = qcompiler.save(qm, tmp_path / "ct", format="compressed-tensors", float_layers=())  # lm_head too
    cfg = __import__("json").loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == fmt
    hf = AutoModelForCausalLM.from_pretrained(out)           # compressed-tensors decompresses it
    back = qcompiler.load(out)                                # qcompiler's reader, qcompiler's ops
    with torch.no_grad():
        want = qm(input_ids=ids).logits
        got_hf, got_back = hf(input_ids=ids).logits, back(input_ids=ids).logits
    if fmt == "int-quantized":
        # transformers runs the decompressed float weight on float activations; qcompiler quantizes them
        assert ((got_hf - want).norm() / want.norm()) < 0.05
        torch.testing.assert_close(got_back, want, rtol=1e-4, atol=1e-4)  # same int8 weights, same int8 ops
    else:
        # the same dequantized weights: equal up to float32 summation order
        torch.testing.assert_close(got_hf, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_back, want, rtol=1e-4, atol=1e-4)
        gen = qm.generate(ids[:1, :4], max_new_tokens=8, do_sample=False)
        assert torch.equal(hf.generate(ids[:1, :4], max_new_tokens=8, do_sample=False), gen)
    assert len(back.report().quantized) == len(qm.report().quantized)


def test_reader_matches_library_decompression_per_layer(tmp_path, llama):
    """Each layer's dequantized weight from qcompiler's reader equals compressed-tensors' own."""
    from transformers import AutoModelForCausalLM
    from qcompiler.formats.checkpoint_files import CheckpointTensors
    from qcompiler.formats.detect import read_format_config
    qm = qcompiler.compile(llama, "w4-weight-only", CAL, progress=False, group_size=16, symmetric=False)
    out = qcompiler.save(qm, tmp_path / "ct", format="compressed-tensors", float_layers=())
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    import json
    from safetensors.torch import load_file
    cfg = read_format_config(out)
    tensors = CheckpointTensors(out)
    model = AutoModelForCausalLM.from_config(llama.config)
    qconf = json.loads((out / "config.json").read_text())["quantization_config"]
    apply_quantization_config(model, QuantizationConfig.model_validate(qconf), show_progress=False)
    sd = load_file(str(out / "model.safetensors"))
    mods = dict(model.named_modules())
    checked = 0
    for name, mod in mods.items():
        if not isinstance(mod, torch.nn.Linear) or not cfg.claims(tensors, name):
            continue
        checked += 1
        from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
        local = {k.removeprefix(name + "."): v for k, v in sd.items() if k.startswith(name + ".")}
        ref = PackedQuantizationCompressor.decompress(local, mod.quantization_scheme)["weight"]
        mine = cfg.read_linear(tensors, name, mod).dequantize()
        torch.testing.assert_close(mine, ref.float(), rtol=0, atol=0)
    assert checked == 15  # every linear, lm_head included


def test_int8_outlier_has_no_peer_format(tmp_path, llama):
    qm = qcompiler.compile(llama, "int8-outlier", CAL, progress=False)
    with pytest.raises(ExportFormatError, match="outlier.*no compressed-tensors or vLLM equivalent"):
        qcompiler.save(qm, tmp_path / "x", format="compressed-tensors")


def test_unfolded_smoothing_is_refused(tmp_path, llama):
    qm = qcompiler.compile(llama, "w8a8-smoothquant", CAL, progress=False, smooth="all")
    with pytest.raises(ExportFormatError, match=r"o_proj.*explicit x \* \(1/s\)"):
        qcompiler.save(qm, tmp_path / "x", format="compressed-tensors")


@pytest.fixture(scope="module")
def w4_export(tmp_path_factory, llama):
    qm = qcompiler.compile(llama, "w4-weight-only", CAL, progress=False, group_size=32)
    return qcompiler.save(qm, tmp_path_factory.mktemp("w4") / "ct", format="compressed-tensors")


def _edited(src, tmp_path, edit):
    import json
    import shutil
    dst = tmp_path / "edited"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg["quantization_config"])
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_bits_not_matching_tensors(tmp_path, w4_export):
    from qcompiler.formats import CheckpointFormatError
    d = _edited(w4_export, tmp_path, lambda q: q["config_groups"]["group_0"]["weights"].update(num_bits=8))
    with pytest.raises(CheckpointFormatError, match=r"q_proj\.weight_packed.*num_bits=8"):
        qcompiler.load(d)


def test_group_size_not_matching_tensors(tmp_path, w4_export):
    from qcompiler.formats import CheckpointFormatError
    d = _edited(w4_export, tmp_path, lambda q: q["config_groups"]["group_0"]["weights"].update(group_size=16))
    with pytest.raises(CheckpointFormatError, match=r"q_proj\.weight_scale.*group_size=16"):
        qcompiler.load(d)


def test_asymmetric_config_without_zero_points(tmp_path, w4_export):
    from qcompiler.formats import CheckpointFormatError
    d = _edited(w4_export, tmp_path, lambda q: q["config_groups"]["group_0"]["weights"].update(symmetric=False))
    with pytest.raises(CheckpointFormatError, match=r"weight_zero_point' is missing"):
        qcompiler.load(d)


def test_unread_format_is_refused(tmp_path, w4_export):
    from qcompiler.formats import UnsupportedFormatError
    def edit(q):
        q["format"] = "marlin-24"
        q["config_groups"]["group_0"]["format"] = "marlin-24"
    d = _edited(w4_export, tmp_path, edit)
    with pytest.raises(UnsupportedFormatError, match="marlin-24"):
        qcompiler.load(d)


def test_lm_head_written_in_float_by_default(tmp_path, w4_export, llama, ids):
    """vLLM cannot load a quantized lm_head: by default it is written as its exact dequantization."""
    import json
    from transformers import AutoModelForCausalLM
    q = json.loads((w4_export / "config.json").read_text())["quantization_config"]
    assert q["ignore"] == ["lm_head"]
    hf = AutoModelForCausalLM.from_pretrained(w4_export)
    back = qcompiler.load(w4_export)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, hf(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert len(back.report().quantized) == 14


def test_bfloat16_model_keeps_its_codes(tmp_path, llama):
    """In a bf16 model the scales are stored as bf16 holds them; the integer codes are unchanged."""
    import copy
    from qcompiler.formats.checkpoint_files import CheckpointTensors
    from qcompiler.formats.compressed_tensors_writer import _layers
    from qcompiler.formats.detect import read_format_config
    model = copy.deepcopy(llama).to(torch.bfloat16)
    qm = qcompiler.compile(model, "w4-weight-only", CAL, progress=False, group_size=32)
    out = qcompiler.save(qm, tmp_path / "bf16", format="compressed-tensors")
    cfg, tensors = read_format_config(out), CheckpointTensors(out)
    mods = dict(model.named_modules())
    written = _layers(qm)
    for name, layer in written.items():
        if name == "lm_head":
            continue
        got = cfg.read_linear(tensors, name, mods[name])
        g = layer.group_size
        idx = torch.arange(layer.weight.shape[1]) // g
        want_codes = torch.round(layer.weight / layer.scale[:, idx]) + (8 if layer.symmetric else 0)
        assert torch.equal(got.codes.float(), want_codes), name
        torch.testing.assert_close(got.scales, layer.scale.to(torch.bfloat16).float(), rtol=0, atol=0)
