"""Bad checkpoints and settings: each a clear error naming the file, tensor or block."""

import json
import shutil
import pickle

import pytest
import torch

import qcompiler
from qcompiler.errors import UnsupportedError
from qcompiler.loading import CheckpointError, CheckpointMismatchError, DeviceMemoryError


@pytest.fixture
def ckpt(llama_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(llama_dir[1], dst)
    return dst


def _load(path, **kw):
    return qcompiler.from_pretrained(path, scheme="w4-weight-only", dtype=torch.float32, progress=False, **kw)


def test_missing_shard(ckpt):
    victim = sorted(ckpt.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=rf"shard .*{victim.name} is missing"):
        _load(ckpt)


def test_truncated_shard(ckpt):
    victim = sorted(ckpt.glob("model-*.safetensors"))[2]
    victim.write_bytes(victim.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match=rf"{victim.name} is truncated"):
        _load(ckpt)


def test_config_not_matching_tensors(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=r"tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight' in "
                                                      r"model-\d+-of-\d+\.safetensors is \[\d+, \d+\]"):
        _load(ckpt)


def test_config_with_more_layers_than_weights(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="no tensor 'model.layers.2"):
        _load(ckpt)


def test_directory_without_weights(ckpt):
    for p in ckpt.glob("model*"):
        p.unlink()
    with pytest.raises(CheckpointError, match="holds no weights"):
        _load(ckpt)


def test_directory_without_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json does not exist"):
        _load(ckpt)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8])
def test_dtype_the_scheme_cannot_take(ckpt, dtype):
    with pytest.raises(UnsupportedError, match=str(dtype)):
        qcompiler.from_pretrained(ckpt, scheme="int8-outlier", dtype=dtype, progress=False)


def test_too_little_device_memory_says_how_much(ckpt):
    with pytest.raises(DeviceMemoryError, match=r"block model\.layers\.\d needs about [\d.]+ GiB"):
        _load(ckpt, max_memory=1000)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path, llama_dir):
    path = tmp_path / "evil"
    path.mkdir()
    shutil.copy(llama_dir[1] / "config.json", path / "config.json")
    with open(path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        _load(path)
