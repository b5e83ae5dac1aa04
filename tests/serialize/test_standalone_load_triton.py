"""``qcompiler.load(dir)`` without the float model, for what ``backend="triton"`` compiled: the
backend's finalize (sibling fusion, the fast generate()) runs on the rebuilt model as compile ran it,
``fuse_siblings=False`` is remembered, and a ``.half()``'d model's recomputed buffers keep its dtype."""

import pytest
import torch

import qcompiler
from qcompiler.passes.fuse_siblings import unfuse_siblings

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels in the interpreter on a CPU machine


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_triton_model_loads_from_its_directory(fuse, make_tiny_hf, make_token_batches, tmp_path):
    model = make_tiny_hf("llama").half().to(_DEVICE)
    cal = [{k: v.to(_DEVICE) for k, v in b.items()} for b in make_token_batches(n=2)]
    qm = qcompiler.compile(model, "w4-weight-only", cal, backend="triton", progress=False, fuse_siblings=fuse)
    ids = cal[0]["input_ids"]
    qcompiler.save(qm, tmp_path / "q")
    loaded = qcompiler.load(tmp_path / "q", device=_DEVICE)
    assert torch.equal(_logits(loaded, ids), _logits(qm, ids))
    # As compile left it: fused groups (which unfuse_siblings counts) only where fusion was asked for.
    assert (unfuse_siblings(loaded) > 0) is fuse
    assert torch.equal(_logits(loaded, ids), _logits(qm, ids))


def test_half_model_recomputed_buffers_keep_their_dtype(make_tiny_hf, make_token_batches, tmp_path):
    # .half() turns the rotary inv_freq (a non-persistent buffer, not saved) to float16; a skeleton
    # built from config.json recomputes it in float32, which moved the logits by ~5e-4.
    model = make_tiny_hf("llama").half()
    cal = make_token_batches(n=2)
    qm = qcompiler.compile(model, "int8-outlier", cal, progress=False)
    qcompiler.save(qm, tmp_path / "q")
    loaded = qcompiler.load(tmp_path / "q")
    inv = [b for n, b in loaded.named_buffers() if n.endswith("inv_freq")]
    assert inv and all(b.dtype == torch.float16 for b in inv)
    ids = cal[0]["input_ids"]
    assert torch.equal(_logits(loaded, ids), _logits(qm, ids))


def test_triton_model_where_triton_cannot_run_is_refused_clearly(make_tiny_hf, make_token_batches, tmp_path,
                                                                 monkeypatch):
    model = make_tiny_hf("llama").half().to(_DEVICE)
    cal = [{k: v.to(_DEVICE) for k, v in b.items()} for b in make_token_batches(n=2)]
    qcompiler.save(qcompiler.compile(model, "w8-weight-only", cal, backend="triton", progress=False), tmp_path / "q")
    import qcompiler.backends.triton.backend as triton_backend
    monkeypatch.setattr(triton_backend, "is_available", lambda: (False, "no CUDA GPU (test)"))
    from qcompiler.serialize import LoadError
    with pytest.raises(LoadError, match=r"compiled for backend 'triton'.*no CUDA GPU \(test\)"):
        qcompiler.load(tmp_path / "q", device=_DEVICE)
