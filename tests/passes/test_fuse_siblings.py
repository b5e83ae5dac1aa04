"""Sibling fusion (q/k/v across regions, gate/up inside the MLP region) on the Triton backend:
fewer kernel calls, the same outputs and tokens as the unfused model, no extra weight bytes,
the refused groups with their reason, and every way out of the model (save/load, save_pretrained,
compressed-tensors, ONNX) unchanged. The kernels run in the CPU interpreter (tiny Llama, fp16)."""

from __future__ import annotations

import copy
import glob

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import qcompiler
from qcompiler.backends.triton.sibling_group import SiblingRegionModule
from qcompiler.capture import RegionModule
from qcompiler.model_bytes import state_bytes
from qcompiler.passes.fuse_siblings import fuse_siblings, unfuse_siblings

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter on a CPU machine
SCHEMES = ["w8-weight-only", "w4-weight-only", "gptq-w4", "awq-w4", "nf4", "int8-outlier", "w8a8-smoothquant"]
LAYERS = 2


class _KernelCalls(TorchDispatchMode):
    """Counts the qcompiler_triton ops a forward runs (one per kernel call of a linear)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += getattr(func, "namespace", "") == "qcompiler_triton"
        return func(*args, **(kwargs or {}))


def _compile(make_tiny_hf, make_token_batches, scheme="w4-weight-only", **kw):
    model = make_tiny_hf("llama").half().to(_DEVICE)
    cal = [{k: v.to(_DEVICE) for k, v in b.items()} for b in make_token_batches(n=2)]
    return model, qcompiler.compile(model, scheme, cal, backend="triton", progress=False, **kw)


def _assert_same(out, ref):
    if out.is_cuda:  # the GPU GEMV may pick another split-K / tile for the wider N: fp16 rounding
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        assert err < 1e-2, err
    else:  # the interpreter sums each output column the same way whatever N: equal to the bit
        assert torch.equal(out, ref), (out - ref).abs().max()


def _run(qm, ids):
    mode = _KernelCalls()
    with torch.no_grad(), mode:
        logits = qm(input_ids=ids).logits
    return logits, mode.n


def _ids(batch=2, seq=9, seed=1):
    return torch.randint(3, 256, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(_DEVICE)


def _attn(qm, layer=0):
    return qm.model.model.layers[layer].self_attn


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fused_model_computes_what_the_unfused_one_does(scheme, make_tiny_hf, make_token_batches):
    _, qm = _compile(make_tiny_hf, make_token_batches, scheme)
    fused = [n for r in qm.report().quantized for n in r.notes if n.startswith("sibling fusion: ")]
    assert len(fused) == LAYERS * 5, fused  # q, k, v, gate, up of each layer say which group
    attn = _attn(qm)
    q_w, k_w = (next(getattr(attn, p).gm.buffers()) for p in ("q_proj", "k_proj"))
    assert q_w.untyped_storage().data_ptr() == k_w.untyped_storage().data_ptr()  # one storage, views
    bytes_fused = state_bytes(qm)
    prompt, token = _ids(), _ids(batch=1, seq=1)
    outs = [_run(qm, ids) for ids in (prompt, token)]
    assert unfuse_siblings(qm) == LAYERS * 4  # q, k, v and the MLP region of each layer
    refs = [_run(qm, ids) for ids in (prompt, token)]
    assert state_bytes(qm) == bytes_fused
    for (out, calls), (ref, ref_calls) in zip(outs, refs):
        assert ref_calls - calls == LAYERS * 3  # q/k/v: 3 -> 1, gate/up: 2 -> 1
        _assert_same(out, ref)


def test_weight_bytes_do_not_grow_and_tokens_match(make_tiny_hf, make_token_batches):
    model, qm = _compile(make_tiny_hf, make_token_batches)
    _, plain = _compile(make_tiny_hf, make_token_batches, fuse_siblings=False)
    assert not any(isinstance(m, SiblingRegionModule) for m in plain.modules())
    assert not any("sibling" in n for n in plain.report().notes)
    assert state_bytes(qm) == state_bytes(plain)
    prompt = _ids(batch=1, seq=5)
    with torch.no_grad():
        a = qm.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        b = plain.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_member_with_another_input_or_alone_computes_its_own_slice(make_tiny_hf, make_token_batches):
    _, qm = _compile(make_tiny_hf, make_token_batches)
    attn = _attn(qm)
    g = torch.Generator().manual_seed(3)
    h, other = (torch.randn(1, 3, 64, generator=g).half().to(_DEVICE) for _ in range(2))
    pending = attn.q_proj._qc_fast.group.pending

    def own(proj, x):  # the region's own (unfused) graph
        return proj.gm(x)[0]

    with torch.no_grad():
        assert torch.equal(attn.k_proj(other), own(attn.k_proj, other))  # alone, no leader call before
        q = attn.q_proj(h)
        assert pending.x is h
        k = attn.k_proj(other)  # another input: its own slice, the kept output stays for v
        v = attn.v_proj(h)
        assert torch.equal(k, own(attn.k_proj, other))
        _assert_same(q, own(attn.q_proj, h))
        _assert_same(v, own(attn.v_proj, h))
        assert pending.x is h  # k never took its slice of h's output
        _assert_same(attn.k_proj(h), own(attn.k_proj, h))
        assert pending.x is None and pending.y is None  # every member took its slice: released
        attn.q_proj(h)
        h.mul_(2)  # changed in place after the leader's call: the kept output is stale
        assert torch.equal(attn.k_proj(h), own(attn.k_proj, h))


def test_groups_whose_x_quantization_differs_are_not_fused(make_tiny_hf, make_token_batches):
    _, qm = _compile(make_tiny_hf, make_token_batches, "int8-outlier", fuse_siblings=False)
    k = _attn(qm).k_proj.gm
    name = next(n.args[3].target for n in k.graph.nodes if n.op == "call_function")
    setattr(k, name, torch.tensor([5], device=_DEVICE))  # k_proj now keeps another outlier column in 16 bits
    result = fuse_siblings(qm, (qm.record.example_args, qm.record.example_kwargs))
    why = result.not_fused["model.layers.0.self_attn.k_proj"]
    assert "outlier_idx" in why and "X is not quantized the same way" in why, why
    assert any(g.layers == ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj")
               for g in result.fused), [g.layers for g in result.fused]


def test_double_quantized_nf4_is_not_fused_and_says_why(make_tiny_hf, make_token_batches):
    _, qm = _compile(make_tiny_hf, make_token_batches, "nf4", double_quant=True)
    assert not any(isinstance(m, SiblingRegionModule) for m in qm.modules())
    notes = {r.layer: r.notes for r in qm.report().quantized}
    assert any("double-quantized NF4" in n for n in notes["model.layers.0.self_attn.k_proj"])
    assert any("double-quantized NF4" in n for n in notes["model.layers.0.mlp.up_proj"])


def test_save_load_and_exports_see_the_unfused_model(make_tiny_hf, make_token_batches, tmp_path):
    model, qm = _compile(make_tiny_hf, make_token_batches)
    _, plain = _compile(make_tiny_hf, make_token_batches, fuse_siblings=False)
    ids = _ids()
    ref, _ = _run(qm, ids)
    loaded = qcompiler.load(qcompiler.save(qm, tmp_path / "q"), make_tiny_hf("llama").half().to(_DEVICE))
    out, _ = _run(loaded, ids)
    assert torch.equal(out, ref)  # the same fused kernels on the same tensors
    assert isinstance(_attn(loaded).q_proj, SiblingRegionModule)  # load fuses again
    errors = []
    for m in (qm, plain):  # the triton ops have no ONNX translation: the same refusal either way
        with pytest.raises(qcompiler.UnsupportedError) as e:
            qcompiler.export_onnx(m, {"input_ids": ids}, tmp_path / "m.onnx")
        errors.append(e.value.message)
    assert errors[0] == errors[1]


@pytest.mark.parametrize("what", ["hf", "ct"])
def test_exports_write_the_unfused_tensors(make_tiny_hf, make_token_batches, tmp_path, what):
    from safetensors.torch import load_file
    if what == "ct":
        pytest.importorskip("compressed_tensors", reason="the compressed-tensors writer needs compressed-tensors")
    _, qm = _compile(make_tiny_hf, make_token_batches)
    _, plain = _compile(make_tiny_hf, make_token_batches, fuse_siblings=False)

    def tensors(folder):
        out = {}
        for f in glob.glob(f"{folder}/*.safetensors"):
            out.update(load_file(f))
        return out

    write = {"hf": lambda m, p: m.save_pretrained(p),
             "ct": lambda m, p: qcompiler.save(m, p, format="compressed-tensors")}[what]
    write(qm, tmp_path / "fused")
    write(plain, tmp_path / "plain")
    a, b = tensors(tmp_path / "fused"), tensors(tmp_path / "plain")
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_moving_the_model_unfuses_it(make_tiny_hf, make_token_batches):
    _, qm = _compile(make_tiny_hf, make_token_batches)
    ids = _ids()
    ref, _ = _run(qm, ids)
    twin = copy.deepcopy(qm)  # a copy stays fused, on its own storage
    assert isinstance(_attn(twin).q_proj, SiblingRegionModule)
    group, twin_group = _attn(qm).q_proj._qc_fast.group, _attn(twin).q_proj._qc_fast.group
    assert twin_group.arg1.data_ptr() != group.arg1.data_ptr()  # arg1: the concatenated codes
    assert next(_attn(twin).k_proj.gm.buffers()).untyped_storage().data_ptr() == \
        twin_group.arg1.untyped_storage().data_ptr()  # the copy's members are views of the copy's storage
    assert torch.equal(_run(twin, ids)[0], ref)
    qm.to(_DEVICE)  # a move (here to where it is already) is what un-fuses
    assert not any(isinstance(m, SiblingRegionModule) for m in qm.modules())
    assert all(type(r.module) is RegionModule for r in qm.program.regions)
    out, _ = _run(qm, ids)
    _assert_same(out, ref)
