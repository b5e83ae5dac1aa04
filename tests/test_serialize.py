"""qcompiler.save / qcompiler.load: bit-exact round trips for every scheme, and bad files."""

import json
import pickle
import shutil

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.serialize import (BaseModelMismatchError, IntegrityError, LoadError, SaveError, VersionMismatchError,
                                 files)
from qcompiler.serialize.graph_codec import decode_graph
from qcompiler.serialize.values import decode_arg, encode_arg, from_json, to_json
from qcompiler.spec import LAYER_KEY, SPEC_KEY, LinearQuantSpec, OutlierMode, WeightRefs


def outlier_batch(rows: int = 16, features: int = 64, cols=(3, 17, 40), scale: float = 20.0, generator=None):
    """Gaussian activations with a few feature columns scaled up (LLM.int8()'s outlier pattern)."""
    x = torch.randn(rows, features, generator=generator)
    x[:, list(cols)] *= scale
    return x


class Block(nn.Module):
    """A pre-norm MLP block whose norm weight creates outlier features (as in real LLMs)."""

    def __init__(self, d: int = 64, h: int = 128, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)
        with torch.no_grad():
            self.norm.weight[[3, 17, 40]] = 12.0

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


def _calib(n=4, rows=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [outlier_batch(rows=rows, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def block():
    return Block().eval()


@pytest.fixture(scope="module")
def saved_block(block, tmp_path_factory):
    """int8-outlier Block saved once; tests copy the directory before damaging it."""
    qm = qcompiler.compile(block, "int8-outlier", _calib(), progress=False)
    path = tmp_path_factory.mktemp("saved") / "block"
    qcompiler.save(qm, path)
    return qm, path


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _specs(qm):
    return {(label, n.name): n.meta[SPEC_KEY] for label, gm in qm.graph_modules.items()
            for n in gm.graph.nodes if SPEC_KEY in n.meta}


@pytest.mark.parametrize("scheme", qcompiler.list_schemes())
def test_round_trip_bit_exact_every_scheme(scheme, block, tmp_path):
    qm = qcompiler.compile(block, scheme, _calib(), progress=False)
    qcompiler.save(qm, tmp_path / scheme)
    loaded = qcompiler.load(tmp_path / scheme, block)
    x = outlier_batch(rows=7, generator=torch.Generator().manual_seed(9))  # other rows than captured
    with torch.no_grad():
        assert torch.equal(qm(x), loaded(x))  # same graph, same tensors: identical bits
    assert _specs(loaded) == _specs(qm)
    assert loaded.report().to_dict() == qm.report().to_dict()
    assert loaded.record.calibration_absmax.keys() == qm.record.calibration_absmax.keys()
    for layer, a in qm.record.calibration_absmax.items():
        assert torch.equal(a, loaded.record.calibration_absmax[layer])
    saved_state = {k: v for gm in qm.graph_modules.values() for k, v in gm.state_dict().items()}
    loaded_state = {k: v for gm in loaded.graph_modules.values() for k, v in gm.state_dict().items()}
    assert saved_state.keys() == loaded_state.keys()
    assert all(saved_state[k].dtype == loaded_state[k].dtype and torch.equal(saved_state[k], loaded_state[k])
               for k in saved_state)


def test_hf_causal_lm_regions_outer_state_and_generate(tmp_path, make_tiny_hf, make_token_batches):
    model = make_tiny_hf("gpt2")  # split into several regions; embeddings and norms stay outside
    qm = qcompiler.compile(model, "int8-outlier", make_token_batches(2, 2, 10), progress=False)
    assert len(qm.program.regions) > 1
    qcompiler.save(qm, tmp_path / "gpt2")
    loaded = qcompiler.load(tmp_path / "gpt2", model)
    ids = make_token_batches(1, 2, 9, seed=3)[0]["input_ids"]
    with torch.no_grad():
        assert torch.equal(qm(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert torch.equal(qm.generate(ids, max_new_tokens=4, do_sample=False),
                       loaded.generate(ids, max_new_tokens=4, do_sample=False))
    desc = json.loads((tmp_path / "gpt2" / "qcompiler.json").read_text())
    assert desc["outer"], "the float state outside the regions is saved too"


def test_files_are_safetensors_and_json_only_and_no_pickle_on_load(saved_block, block, monkeypatch):
    _, path = saved_block
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "qcompiler.json"]

    def forbidden(*a, **k):
        raise AssertionError("load must not unpickle anything")
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    qcompiler.load(path, block)


def test_truncated_weights(saved_block, block, tmp_path):
    path = _copy(saved_block[1], tmp_path)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(IntegrityError, match="truncated"):
        qcompiler.load(path, block)


def test_tampered_weights(saved_block, block, tmp_path):
    path = _copy(saved_block[1], tmp_path)
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x01  # one bit of one weight
    f.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        qcompiler.load(path, block)


def test_tampered_description(saved_block, block, tmp_path):
    path = _copy(saved_block[1], tmp_path)
    desc = json.loads((path / "qcompiler.json").read_text())
    node = next(n for n in desc["regions"][0]["graph"] if n["op"] == "call_function")
    node["kwargs"] = {"dict": [["alpha", 2.0]]}
    (path / "qcompiler.json").write_text(json.dumps(desc))
    with pytest.raises(IntegrityError, match="changed after"):
        qcompiler.load(path, block)


@pytest.mark.parametrize("damage", ["missing-weights", "not-json", "missing-description"])
def test_missing_or_unreadable_files(damage, saved_block, block, tmp_path):
    path = _copy(saved_block[1], tmp_path)
    if damage == "missing-weights":
        (path / "model.safetensors").unlink()
    elif damage == "not-json":
        (path / "qcompiler.json").write_text("{not json")
    else:
        (path / "qcompiler.json").unlink()
    with pytest.raises(IntegrityError):
        qcompiler.load(path, block)


def test_version_mismatch(saved_block, block, monkeypatch):
    path = saved_block[1]
    real = files.versions
    monkeypatch.setattr(files, "versions", lambda: {**real(), "qcompiler": "9.0.0"})
    with pytest.raises(VersionMismatchError, match="qcompiler 0.1.0, this is qcompiler 9.0.0"):
        qcompiler.load(path, block)
    x = outlier_batch(rows=5)
    with torch.no_grad():
        assert torch.equal(qcompiler.load(path, block, check_versions=False)(x), saved_block[0](x))


def test_format_version_mismatch(saved_block, block, tmp_path):
    path = _copy(saved_block[1], tmp_path)
    desc = json.loads((path / "qcompiler.json").read_text())
    desc["format_version"] = 99
    (path / "qcompiler.json").write_text(json.dumps(desc))
    with pytest.raises(VersionMismatchError, match="format version 99"):
        qcompiler.load(path, block)


def test_wrong_base_model(saved_block):
    with pytest.raises(BaseModelMismatchError, match="weights differ"):
        qcompiler.load(saved_block[1], Block(seed=1))
    with pytest.raises(BaseModelMismatchError, match="tensors"):
        qcompiler.load(saved_block[1], Block(h=96))
    with pytest.raises(BaseModelMismatchError, match="compiled from a"):
        qcompiler.load(saved_block[1], nn.Sequential(nn.Linear(64, 64)))


def test_save_needs_a_compiled_model(tmp_path):
    with pytest.raises(SaveError, match="qcompiler.compile"):
        qcompiler.save(Block(), tmp_path / "x")


def test_file_cannot_name_arbitrary_functions(saved_block):
    """Even a description with a valid hash only resolves registered ops and the template's calls."""
    gm = saved_block[0].graph_modules["<model>"]
    bad = [{"name": "x", "op": "placeholder", "target": "x", "args": {"tuple": []}, "kwargs": {"dict": []}},
           {"name": "boom", "op": "call_function", "target": {"python": "os.system"},
            "args": {"tuple": [{"node": "x"}]}, "kwargs": {"dict": []}}]
    with pytest.raises(LoadError, match="os.system"):
        decode_graph(bad, gm)
    bad[1]["target"] = {"op": "nonexistent_ns::nope", "overload": "default"}
    with pytest.raises(LoadError, match="not registered"):
        decode_graph(bad, gm)
    bad[1].update(op="call_method", target="__reduce__")
    with pytest.raises(LoadError, match="private method"):
        decode_graph(bad, gm)


def test_value_codecs_round_trip():
    spec = LinearQuantSpec("a.b", 8, 4, outliers=OutlierMode.STATIC, threshold=float("inf"), outlier_idx=(1, 5),
                           weights=WeightRefs("q", "s", "wo", "oi", None), notes=("fell back",))
    assert from_json(LinearQuantSpec, json.loads(json.dumps(to_json(spec)))) == spec
    arg = (1, 2.5, float("-inf"), [torch.float16, torch.device("cpu")], {"k": slice(0, None, 2)}, None, "s", True)
    assert decode_arg(json.loads(json.dumps(encode_arg(arg)))) == arg
    with pytest.raises(ValueError):
        from_json(LinearQuantSpec, {**to_json(spec), "no_such_field": 1})


def test_loaded_graph_keeps_node_meta(saved_block, block):
    qm = saved_block[0]
    loaded = qcompiler.load(saved_block[1], block)

    def meta(m, key):
        return {(label, n.name): n.meta.get(key) for label, gm in m.graph_modules.items() for n in gm.graph.nodes}
    assert meta(loaded, LAYER_KEY) == meta(qm, LAYER_KEY)
    assert {s.layer for s in _specs(loaded).values()} == {"up", "down"}


@pytest.mark.parametrize("backend", ["triton", "onnxruntime"])
def test_round_trip_other_backends(backend, block, tmp_path):
    """Lowered graphs (Triton ops) and finalized models (ONNX Runtime) load the same way."""
    try:
        qcompiler.backends.get_backend(backend).check()
    except qcompiler.QCompilerError as e:
        pytest.skip(f"backend {backend} not usable here: {e.message}")
    model, calib, x = block, _calib(), outlier_batch(rows=7, generator=torch.Generator().manual_seed(9))
    if backend == "triton":
        if not torch.cuda.is_available():
            pytest.skip("lower-triton rewrites fp16 layers on a CUDA GPU only; this machine has none")
        model = Block().half().cuda().eval()
        calib, x = [c.half().cuda() for c in calib], x.half().cuda()
    qm = qcompiler.compile(model, "int8-outlier", calib, backend=backend, progress=False)
    qcompiler.save(qm, tmp_path / backend)
    loaded = qcompiler.load(tmp_path / backend, model)
    with torch.no_grad():
        assert torch.equal(qm(x), loaded(x))
    assert type(loaded.model) is type(qm.model) and loaded.report() == qm.report()
