"""A directory written by ``qcompiler.save`` (config.json: quant_method="qcompiler") read by plain
``AutoModelForCausalLM.from_pretrained``: the same model as ``qcompiler.load(dir)`` (bit-identical
logits, same greedy tokens), ``save_pretrained`` that loads again, and a clear error, naming the
file or tensor, for a damaged or mismatched directory."""

import json
import subprocess
import sys

import pytest
import torch

import qcompiler
from qcompiler.serialize import IntegrityError

IDS = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(1))


def _saved(tmp_path_factory, scheme: str, tied: bool = False, **options):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
                                     eos_token_id=1, tie_word_embeddings=tied)).eval()
    calib = [torch.randint(3, 256, (1, 8), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    qm = qcompiler.compile(m, scheme, calibration_data=calib, progress=False, **options)
    return qcompiler.save(qm, tmp_path_factory.mktemp("saved") / scheme)


@pytest.fixture(scope="module")
def int8_outlier_dir(tmp_path_factory):
    return _saved(tmp_path_factory, "int8-outlier")  # calibrated, no peer format: only qcompiler's own


@pytest.fixture(scope="module")
def w4_dir(tmp_path_factory):
    return _saved(tmp_path_factory, "w4-weight-only", tied=True, group_size=32)  # tied embeddings, lm_head quantized


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("which", ["int8_outlier_dir", "w4_dir"])
def test_from_pretrained_is_qcompiler_load(which, request):
    from transformers import AutoModelForCausalLM, PreTrainedModel
    d = request.getfixturevalue(which)
    model = AutoModelForCausalLM.from_pretrained(d, device_map="cpu")
    ref = qcompiler.load(d)
    assert isinstance(model, PreTrainedModel)
    assert not [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    assert torch.equal(_logits(model), _logits(ref))  # bit for bit: the same graphs around the same tensors
    gen = model.generate(IDS, max_new_tokens=6, do_sample=False)
    assert torch.equal(gen, ref.generate(IDS, max_new_tokens=6, do_sample=False))
    assert model._qcompiler_model.report().scheme == ref.report().scheme


def test_save_pretrained_loads_again(int8_outlier_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(int8_outlier_dir)
    want = _logits(model)
    model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]["quant_method"] == \
        "qcompiler"
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "again")), want)
    out = qcompiler.save(model, tmp_path / "native")  # the from_pretrained model, through qcompiler.save
    assert torch.equal(_logits(qcompiler.load(out)), want)


# A fresh process, as a user has it: `import qcompiler` registers the quantizer lazily (transformers'
# quantizers are imported only by from_pretrained), and that is enough for a plain from_pretrained.
_SCRIPT = """
import sys, torch
import qcompiler
assert "transformers.quantizers" not in sys.modules, "import qcompiler must not import transformers' quantizers"
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1])
with torch.no_grad():
    torch.save(m(input_ids=torch.tensor(eval(sys.argv[2]))).logits, sys.argv[3])
"""


def test_fresh_process_with_import_qcompiler(int8_outlier_dir, tmp_path):
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(int8_outlier_dir), str(IDS.tolist()),
                          str(tmp_path / "logits.pt")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "logits.pt"), _logits(qcompiler.load(int8_outlier_dir)))


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_changed_shard_names_the_file(int8_outlier_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    d = _copy(int8_outlier_dir, tmp_path / "d")
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one bit of one tensor
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors does not match the sha256"):
        AutoModelForCausalLM.from_pretrained(d)


def test_config_of_another_model_names_the_tensor(int8_outlier_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    d = _copy(int8_outlier_dir, tmp_path / "d")
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError, match=r"'model\.embed_tokens\.weight' is \[256, 128\] in config\.json's "
                                             r"model, \[256, 64\] in the file"):
        AutoModelForCausalLM.from_pretrained(d)


def test_missing_description_names_the_file(int8_outlier_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    d = _copy(int8_outlier_dir, tmp_path / "d")
    (d / "qcompiler.json").unlink()
    with pytest.raises(IntegrityError, match=r"qcompiler\.json does not exist"):
        AutoModelForCausalLM.from_pretrained(d)


def test_edited_description_is_refused(int8_outlier_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    d = _copy(int8_outlier_dir, tmp_path / "d")
    doc = json.loads((d / "qcompiler.json").read_text())
    doc["regions"][0]["tensors"].popitem()  # a region that no longer names one of its tensors
    (d / "qcompiler.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="was not written with this model's description"):
        AutoModelForCausalLM.from_pretrained(d)


def test_disk_offload_is_refused_by_name(int8_outlier_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    from qcompiler.errors import UnsupportedError
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    with pytest.raises(UnsupportedError, match=r"'model\.layers\.1\..*' was offloaded to disk"):
        AutoModelForCausalLM.from_pretrained(int8_outlier_dir, device_map=device_map, offload_folder=tmp_path / "off")
