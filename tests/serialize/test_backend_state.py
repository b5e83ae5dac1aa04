"""A triton-backend model's saved kernel configs (``kernel_configs.json``): written by save next to
the tensors, checked like them, put back by both load paths before any kernel runs - so load(dir)
is bit-exact even where the autotuner would have picked other configs in the new process."""

import json
import shutil

import pytest
import torch

import qcompiler
from qcompiler.backends.triton import kernel_config_record as kcr
from qcompiler.serialize import IntegrityError, LoadError, verify_files

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels in the interpreter on a CPU machine
_FILE = kcr.RECORD_FILE


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _forget_tuning():
    """What a fresh process knows: no launcher has chosen a config, no autotuner has a cache."""
    kcr._import_kernels()
    for launcher in kcr.launchers().values():
        launcher.meta.clear()
        if launcher.autotuner is not None:
            launcher.autotuner.cache.clear()


@pytest.fixture
def fresh_process():
    kept = {name: dict(l.meta) for name, l in kcr.launchers().items()}
    _forget_tuning()
    yield
    for name, l in kcr.launchers().items():
        l.meta.update(kept.get(name, {}))


_SAVED: dict = {}  # compiled and saved once for the module (the root conftest's helpers are fixtures)


@pytest.fixture
def saved(make_tiny_hf, make_token_batches, tmp_path_factory):
    """A w4-weight-only triton Llama saved as if on a GPU named "Fake GPU" (on a CPU machine the
    interpreter's configs stand in for tuned ones)."""
    if not _SAVED:
        _SAVED["v"] = _compile_and_save(make_tiny_hf, make_token_batches, tmp_path_factory)
    return _SAVED["v"]


def _compile_and_save(make_tiny_hf, make_token_batches, tmp_path_factory):
    model = make_tiny_hf("llama").half().to(_DEVICE)
    cal = [{k: v.to(_DEVICE) for k, v in b.items()} for b in make_token_batches(n=2)]
    qm = qcompiler.compile(model, "w4-weight-only", cal, backend="triton", progress=False)
    ids = cal[0]["input_ids"]
    want = _logits(qm, ids)
    root = tmp_path_factory.mktemp("kcfg") / "q"
    with pytest.MonkeyPatch.context() as mp:
        if not torch.cuda.is_available():
            mp.setattr(kcr, "card", lambda device: "Fake GPU")
        qcompiler.save(qm, root)
    return root, model, ids, want


def _with_card(monkeypatch, name):
    if not torch.cuda.is_available():
        monkeypatch.setattr(kcr, "card", lambda device: name)


def test_save_writes_the_record_named_and_hashed_in_the_description(saved):
    root = saved[0]
    doc = json.loads((root / "qcompiler.json").read_text())
    entry = doc["backend_state"]
    assert entry["file"] == _FILE and entry["bytes"] == (root / _FILE).stat().st_size
    import hashlib
    assert entry["sha256"] == hashlib.sha256((root / _FILE).read_bytes()).hexdigest()
    rec = kcr.decode_record(json.loads((root / _FILE).read_text()))
    assert rec.device == (torch.cuda.get_device_name() if torch.cuda.is_available() else "Fake GPU")
    # The weight-only GEMV (M <= 16) and its siblings chose configs while compile ran the example.
    assert any(name.startswith("weight_only_gemv") for name in rec.configs)
    verify_files(root)


def test_no_record_without_a_cuda_card(make_tiny_hf, make_token_batches, tmp_path, monkeypatch):
    monkeypatch.setattr(kcr, "card", lambda device: None)
    model = make_tiny_hf("llama").half().to(_DEVICE)
    cal = [{k: v.to(_DEVICE) for k, v in b.items()} for b in make_token_batches(n=1)]
    qcompiler.save(qcompiler.compile(model, "w8-weight-only", cal, backend="triton", progress=False), tmp_path / "q")
    assert not (tmp_path / "q" / _FILE).exists()
    assert "backend_state" not in json.loads((tmp_path / "q" / "qcompiler.json").read_text())


@pytest.mark.parametrize("with_model", [False, True], ids=["standalone", "with-float-model"])
def test_load_restores_the_configs_before_any_kernel_runs(saved, with_model, fresh_process, monkeypatch):
    root, model, ids, want = saved
    _with_card(monkeypatch, "Fake GPU")
    calls = []
    real = kcr.restore

    def spy(configs):
        calls.append(sum(len(l.meta) for l in kcr.launchers().values()))  # configs chosen so far
        result = real(configs)
        calls.append(result)
        return result
    monkeypatch.setattr(kcr, "restore", spy)
    loaded = qcompiler.load(root, model) if with_model else qcompiler.load(root, device=_DEVICE)
    chosen_before, result = calls
    rec = kcr.decode_record(json.loads((root / _FILE).read_text()))
    assert chosen_before == 0  # no kernel had run in this "process" yet
    assert result.restored == sum(len(e) for e in rec.configs.values()) > 0 and result.kept == 0
    for name, entries in rec.configs.items():
        for key, meta in entries.items():
            assert kcr.launchers()[name].meta[key] == meta
    assert torch.equal(_logits(loaded, ids), want)


def test_another_card_is_not_restored_and_says_so(saved, fresh_process, monkeypatch):
    root, _, ids, want = saved
    monkeypatch.setattr(kcr, "card", lambda device: "Other GPU")
    called = []
    monkeypatch.setattr(kcr, "restore", lambda configs: called.append(configs))
    with pytest.warns(UserWarning, match=r"saved on .* this is Other GPU.*re-tune"):
        loaded = qcompiler.load(root, device=_DEVICE)
    assert not called
    assert any("not restored, the kernels re-tune" in n for n in loaded.report().notes)


def _copy(saved, tmp_path):
    dst = tmp_path / "q"
    shutil.copytree(saved[0], dst)
    return dst


def _same_size(text: str, old: str, new: str) -> str:
    assert len(old) == len(new) and old in text
    return text.replace(old, new, 1)


def test_a_changed_record_is_refused_naming_the_file(saved, tmp_path, fresh_process, monkeypatch):
    _with_card(monkeypatch, "Fake GPU")
    root = _copy(saved, tmp_path)
    text = (root / _FILE).read_text()
    (root / _FILE).write_text(_same_size(text, '"version": 1', '"version": 2'))
    with pytest.raises(IntegrityError, match=rf"{_FILE} does not match the sha256"):
        qcompiler.load(root, device=_DEVICE)
    with pytest.raises(IntegrityError, match=_FILE):
        verify_files(root)
    # Unverified, the content itself is checked: another record version, then not JSON at all.
    with pytest.raises(LoadError, match=rf"{_FILE} cannot be used: kernel-config record version 2"):
        qcompiler.load(root, device=_DEVICE, verify=False)
    (root / _FILE).write_text("x" * len(text.encode()))
    with pytest.raises(IntegrityError, match=rf"{_FILE} is not valid JSON"):
        qcompiler.load(root, device=_DEVICE, verify=False)
    (root / _FILE).unlink()
    with pytest.raises(IntegrityError, match=rf"{_FILE} does not exist"):
        qcompiler.load(root, device=_DEVICE, verify=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the autotuner only tunes there")
@pytest.mark.parametrize("with_model", [False, True], ids=["standalone", "with-float-model"])
def test_gpu_load_in_a_fresh_process_is_bit_exact(with_model, make_tiny_hf, make_token_batches, tmp_path):
    # The bug this fixes: a new process re-autotuned (e.g. the GEMV's SPLIT_K) and its logits moved
    # by up to 3e-3 from the saved model's. Forgetting every choice simulates that new process.
    model = make_tiny_hf("llama").half().cuda()
    cal = [{k: v.cuda() for k, v in b.items()} for b in make_token_batches(n=2)]
    qm = qcompiler.compile(model, "w4-weight-only", cal, backend="triton", progress=False)
    ids = cal[0]["input_ids"]
    rows = {"decode": ids[:1, :1], "prefill": ids}
    want = {k: _logits(qm, x) for k, x in rows.items()}
    qcompiler.save(qm, tmp_path / "q")
    assert (tmp_path / "q" / _FILE).is_file()
    _forget_tuning()
    loaded = qcompiler.load(tmp_path / "q", model) if with_model else qcompiler.load(tmp_path / "q", device="cuda")
    for k, x in rows.items():
        assert torch.equal(_logits(loaded, x), want[k]), k
