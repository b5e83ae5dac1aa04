"""Decoder LMs exported with the KV cache (``past_key_values.{i}.key`` in, ``present.{i}.key``
out) and greedy generation in ONNX Runtime (CPU EP): the same 32 new tokens as the compiled
PyTorch model's ``generate(do_sample=False)``, for an int8 and a weight-only scheme."""

from __future__ import annotations

import onnx
import pytest
import torch

import qcompiler
from qcompiler.backends.onnxruntime.generate import OrtGenerator
from qcompiler.backends.onnxruntime.kv_cache import export_onnx_with_cache
from qcompiler.errors import UnsupportedError

NEW = 32


def _prompt(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (2, 8), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 2, 0  # the second prompt is two tokens shorter, left-padded
    return ids, mask


def _eager_generate(qm, ids, mask, new: int = NEW):
    with torch.no_grad():
        return qm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False)


def _tiny_lm(arch: str):
    """The suite's tiny random-weight LMs (tests/conftest.py), built here for module-scoped fixtures."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=1)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
                                        eos_token_id=1)).eval()


def _compile(arch: str, scheme: str, **options):
    if scheme == "w4-weight-only":
        options.setdefault("group_size", 32)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(3, 256, (2, 12), generator=g)} for _ in range(2)]
    return qcompiler.compile(_tiny_lm(arch), scheme, data, progress=False, **options)


@pytest.fixture(scope="module")
def llama_int8(tmp_path_factory):
    """The tiny Llama compiled with int8-outlier, and its KV-cache export (ort-cpu)."""
    qm = _compile("llama", "int8-outlier")
    return qm, export_onnx_with_cache(qm, tmp_path_factory.mktemp("kv") / "kv.onnx", target="ort-cpu")


def test_layout_and_one_step(llama_int8):
    """Names, dynamic dims and opset of the file; prefill + one decode step match the eager model's
    logits and cache."""
    llama_int8, out = llama_int8
    model = onnx.load(str(out.path))
    assert model.opset_import[0].version >= 17
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert list(dims) == ["input_ids", "attention_mask", "position_ids"] + \
        [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert dims["past_key_values.1.value"] == ["batch_size", 2, "past_sequence_length", 16]
    assert dims["attention_mask"] == ["batch_size", "total_sequence_length"]
    assert [o.name for o in model.graph.output] == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]

    from transformers import DynamicCache
    gen = OrtGenerator(out)
    ids, mask = _prompt()
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    logits, present = gen.step(ids.numpy(), mask.numpy(), pos.numpy(), gen._empty_past(2))
    cache = DynamicCache(config=llama_int8.config)
    with torch.no_grad():
        want = llama_int8(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    torch.testing.assert_close(torch.from_numpy(logits), want.logits[:, -1], rtol=1e-4, atol=1e-5)
    # padding rows attend to nothing, and runtimes fill them differently: compare the real positions
    real = mask.bool()
    torch.testing.assert_close(torch.from_numpy(present[2].numpy()).transpose(1, 2)[real],
                               cache.layers[1].keys.transpose(1, 2)[real], rtol=1e-4, atol=1e-5)
    nxt = torch.tensor([[5], [6]])
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    logits2, _ = gen.step(nxt.numpy(), mask2.numpy(), (pos[:, -1:] + 1).numpy(), present)
    with torch.no_grad():
        want2 = llama_int8(input_ids=nxt, attention_mask=mask2, position_ids=pos[:, -1:] + 1, cache=cache, use_cache=True)
    torch.testing.assert_close(torch.from_numpy(logits2), want2.logits[:, -1], rtol=1e-4, atol=1e-5)
    # other batch sizes and prompt lengths than the export's example (batch 2, 3 new, 5 cached)
    for b, n in ((1, 4), (3, 11)):
        ids = torch.randint(3, 256, (b, n), generator=torch.Generator().manual_seed(b))
        gc = llama_int8.generation_config
        got = gen.generate(ids, max_new_tokens=4, eos_token_id=gc.eos_token_id, pad_token_id=gc.pad_token_id)
        assert torch.equal(got, _eager_generate(llama_int8, ids, None, 4))


@pytest.mark.parametrize("arch,scheme", [("llama", "int8-outlier"), ("llama", "w4-weight-only"), ("gpt2", "int8-outlier")])
def test_greedy_tokens_equal_pytorch(llama_int8, tmp_path, arch, scheme):
    if (arch, scheme) == ("llama", "int8-outlier"):
        qm, out = llama_int8
    else:
        qm = _compile(arch, scheme)
        out = export_onnx_with_cache(qm, tmp_path / "kv.onnx", target="ort-cpu", check=False)
    ids, mask = _prompt(1)
    want = _eager_generate(qm, ids, mask)
    got = OrtGenerator(out).generate(ids, mask, max_new_tokens=NEW, eos_token_id=qm.generation_config.eos_token_id,
                                     pad_token_id=qm.generation_config.pad_token_id)
    assert want.shape[1] > ids.shape[1]
    assert torch.equal(got, want), (got[:, 8:], want[:, 8:])


def test_backend_onnxruntime_generate(llama_int8):
    """``backend="onnxruntime"``: ``qm.generate()`` runs in ONNX Runtime, tokens as eager's."""
    eager, _ = llama_int8
    qm = _compile("llama", "int8-outlier", backend="onnxruntime")
    ids, mask = _prompt(2)
    got = qm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(got, _eager_generate(eager, ids, mask))
    assert any("generate() runs in ONNX Runtime" in n for n in qm.report().notes)
    with pytest.raises(UnsupportedError, match="num_beams=4"):
        qm.generate(input_ids=ids, max_new_tokens=4, num_beams=4)


def test_float_model_with_cache(tmp_path):
    """The uncompiled model (the fp16 baseline of the benchmarks) in the same layout."""
    from qcompiler.backends.onnxruntime.kv_cache import export_float_onnx_with_cache
    model = _tiny_lm("llama")
    out = export_float_onnx_with_cache(model, tmp_path / "fp.onnx", check=False)
    assert out.onnx.input_names == out.layout.input_names
    ids, mask = _prompt(3)
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    got = OrtGenerator(out).generate(ids, mask, max_new_tokens=NEW, eos_token_id=model.generation_config.eos_token_id)
    assert torch.equal(got, want)


def test_generator_from_file_path(llama_int8):
    """A KV-cache file opened by path (another process wrote it): the layout comes from the file's
    inputs and the tokens are the same as through the export object."""
    qm, out = llama_int8
    gen = OrtGenerator(str(out.path))
    assert gen.layout.past_names == out.layout.past_names and gen.layout.dtype == out.layout.dtype
    assert (gen.layout.num_kv_heads, gen.layout.head_dim, gen.layout.position_ids) == (2, 16, True)
    ids, mask = _prompt(4)
    eos, pad = qm.generation_config.eos_token_id, qm.generation_config.pad_token_id
    assert torch.equal(gen.generate(ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad),
                       OrtGenerator(out).generate(ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad))


def test_not_a_kv_cache_file_is_a_clear_error(compile_mlp, tmp_path):
    from qcompiler.errors import ConfigError
    qm = compile_mlp("int8-outlier")
    exported = qcompiler.export_onnx(qm, torch.randn(2, 8, 24), tmp_path / "mlp.onnx", target="ort-cpu", check=False)
    with pytest.raises(ConfigError, match=r"mlp\.onnx is not a KV-cache export: its inputs are \['x'\]"):
        OrtGenerator(exported.path)


def test_batch_padding(llama_int8):
    """Left-padded batches of 3 prompts of different lengths give each row the tokens it gets alone
    (and eager's); a right-padded batch is refused with a clear error, not continued after its padding."""
    qm, out = llama_int8
    gen = OrtGenerator(out)
    eos, pad = qm.generation_config.eos_token_id, qm.generation_config.pad_token_id
    g = torch.Generator().manual_seed(5)
    lengths = (9, 4, 6)
    ids = torch.full((3, 9), 2)
    mask = torch.zeros(3, 9, dtype=torch.long)
    rows = [torch.randint(3, 256, (n,), generator=g) for n in lengths]
    for i, r in enumerate(rows):
        ids[i, 9 - len(r):], mask[i, 9 - len(r):] = r, 1
    got = gen.generate(ids, mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=pad)
    assert torch.equal(got, _eager_generate(qm, ids, mask, 6))
    for i, r in enumerate(rows):
        alone = gen.generate(r[None], max_new_tokens=6, eos_token_id=eos, pad_token_id=pad)
        assert torch.equal(got[i, 9:], alone[0, len(r):]), i
    right = torch.stack([torch.cat([r, torch.full((9 - len(r),), 2)]) for r in rows])
    with pytest.raises(UnsupportedError, match=r"row\(s\) \[1, 2\] are right-padded(.|\n)*padding_side = 'left'"):
        gen.generate(right, (right != 2).long(), max_new_tokens=2)
