"""qcompiler.save -> qcompiler.load(dir) without the float model; atomic saves; the loader registry."""

import json

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.serialize import IntegrityError, LoadError, SaveError, list_loaders, quant_method_of, register_loader


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def streamed(llama_dir, calib):
    return qcompiler.from_pretrained(llama_dir[1], scheme="int8-outlier", calibration_data=calib,
                                     dtype=torch.float32, progress=False)


@pytest.mark.parametrize("scheme", ["int8-outlier", "gptq-w4", "w4-weight-only", "w8a8-smoothquant", "nf4"])
def test_compiled_model_loads_bit_exact_without_float_model(scheme, llama_dir, calib, prompt, tmp_path, monkeypatch):
    model, _ = llama_dir
    data = None if scheme in ("w4-weight-only", "nf4") else calib
    qm = qcompiler.compile(model, scheme=scheme, calibration_data=data, example_inputs=prompt if data is None else None,
                           progress=False)
    qcompiler.save(qm, tmp_path / "saved")
    from qcompiler import capture
    monkeypatch.setattr(capture, "capture_module", lambda *a, **k: pytest.fail("load(dir) must not trace"))
    loaded = qcompiler.load(tmp_path / "saved")
    assert torch.equal(_logits(loaded, prompt), _logits(qm, prompt))
    assert loaded.report().scheme == scheme


def test_streamed_model_round_trip_sharded_with_tokenizer(streamed, prompt, tmp_path):
    class Tok:  # what save needs of a tokenizer: save_pretrained(dir)
        def save_pretrained(self, d):
            (tmp_path / "unused").mkdir(exist_ok=True)
            open(f"{d}/tokenizer.json", "w").write('{"model": "test"}')

    out = qcompiler.save(streamed, tmp_path / "saved", tokenizer=Tok(), max_shard_size="60KB")
    names = sorted(p.name for p in out.iterdir())
    shards = [n for n in names if n.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors.index.json" in names and "tokenizer.json" in names
    assert not [n for n in names if n.startswith(".qcompiler-save")], "no temporary files left"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "qcompiler"
    assert cfg["quantization_config"]["scheme"] == "int8-outlier"
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    loaded = qcompiler.load(out)
    assert torch.equal(_logits(loaded, prompt), _logits(streamed, prompt))
    assert torch.equal(loaded.generate(prompt, max_new_tokens=4, do_sample=False),
                       streamed.generate(prompt, max_new_tokens=4, do_sample=False))
    assert quant_method_of(out) == "qcompiler"


def test_saving_again_with_fewer_shards_removes_stale_ones(streamed, prompt, tmp_path):
    out = tmp_path / "saved"
    qcompiler.save(streamed, out, max_shard_size="60KB")
    qcompiler.save(streamed, out)  # one file now
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and not [n for n in names if n.startswith("model-")]
    assert "model.safetensors.index.json" not in names
    assert torch.equal(_logits(qcompiler.load(out), prompt), _logits(streamed, prompt))


def test_failed_save_leaves_previous_save_intact(streamed, prompt, tmp_path):
    out = tmp_path / "saved"
    qcompiler.save(streamed, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class BrokenTok:
        def save_pretrained(self, d):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        qcompiler.save(streamed, out, tokenizer=BrokenTok(), max_shard_size="60KB")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert torch.equal(_logits(qcompiler.load(out), prompt), _logits(streamed, prompt))


def test_damaged_shard_is_named(streamed, tmp_path):
    out = qcompiler.save(streamed, tmp_path / "saved", max_shard_size="60KB")
    victim = sorted(out.glob("model-*.safetensors"))[1]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{victim.name} does not match the sha256"):
        qcompiler.load(out)
    victim.write_bytes(bytes(data[:-100]))
    with pytest.raises(IntegrityError, match="truncated"):
        qcompiler.load(out, verify=False)


def test_non_hf_model_needs_its_float_model(tmp_path):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    x = torch.randn(4, 16)
    qm = qcompiler.compile(block, "w8-weight-only", example_inputs=x, progress=False)
    out = qcompiler.save(qm, tmp_path / "saved")
    assert not (out / "config.json").exists()
    with pytest.raises(LoadError, match="not a Hugging Face one"):
        qcompiler.load(out)
    assert torch.equal(qcompiler.load(out, block)(x), qm(x))


def test_float_checkpoint_is_not_loadable(llama_dir):
    with pytest.raises(LoadError, match="float checkpoint"):
        qcompiler.load(llama_dir[1])


def test_loader_registry_dispatches_on_quant_method(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "test-format"}}))
    from qcompiler.errors import QCompilerError
    with pytest.raises(QCompilerError, match="test-format"):  # qcompiler.formats has no reader for it either
        qcompiler.load(tmp_path)
    seen = {}

    @register_loader("test-format")
    def fake(path, model=None, **kw):
        seen["call"] = (path, model, kw["device"])
        return nn.Identity()

    try:
        assert isinstance(qcompiler.load(tmp_path, device="cpu"), nn.Identity)
        assert seen["call"] == (tmp_path, None, "cpu") and "test-format" in list_loaders()
    finally:
        from qcompiler.serialize import loaders
        loaders._LOADERS.pop("test-format")


def test_bad_shard_size(streamed, tmp_path):
    with pytest.raises(SaveError, match="is not a size"):
        qcompiler.save(streamed, tmp_path / "x", max_shard_size="lots")
