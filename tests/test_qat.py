"""Quantization-aware training: prepare_qat -> a normal training loop -> convert.

The claim tested: a few training steps with fake quantization bring the *quantized* model's loss
below what post-training quantization of the same float model reaches. The float model is the
teacher of the synthetic task itself (loss 0), so more float training cannot help it: any gain
comes from training against the quantization error. Everything is seeded; the PTQ loss is
measured, not assumed.
"""

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.errors import ConfigError

_FQ = {torch.ops.qcompiler.fake_quantize_int8.default, torch.ops.qcompiler.fake_quantize_uint.default,
       torch.ops.qcompiler.fake_quantize_nf4.default}


@pytest.fixture
def one_thread():
    """Tiny training steps: intra-op threads only add contention on a shared 2-core runner
    (measured 0.8 s vs 18 s for 100 steps)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _student():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).eval()


def _task():
    """Regression onto ``teacher`` (a model of the student's shape); inputs with a few loud features."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    g = torch.Generator().manual_seed(1)

    def batch(n):
        x = torch.randn(n, 32, generator=g)
        x[:, :3] *= 4.0
        with torch.no_grad():
            return x, teacher(x)
    return teacher, batch


def _train(model, batch, steps, lr, seed=3):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for _ in range(steps):
        x, y = batch(128)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _mse(model, test):
    with torch.no_grad():
        return nn.functional.mse_loss(model(test[0]), test[1]).item()


def test_qat_beats_post_training_quantization(one_thread):
    teacher, batch = _task()
    test, cal = batch(1024), [batch(256)[0]]
    assert _mse(teacher, test) == 0.0
    ptq = _mse(qcompiler.compile(teacher, "w4-weight-only", cal, progress=False, group_size=0), test)
    qat = _train(qcompiler.prepare_qat(teacher, "w4-weight-only", example_inputs=cal[0], group_size=0),
                 batch, 100, 3e-5)
    qm = qcompiler.convert(qat, cal)
    qat_loss = _mse(qm, test)
    print(f"w4 per channel: PTQ {ptq:.3g}, QAT (100 steps) {qat_loss:.3g}")
    assert qat_loss < 0.7 * ptq, (qat_loss, ptq)  # measured 6.1e-5 vs 1.5e-4
    # convert stores exactly the grid training saw: the compiled model computes what QAT did
    with torch.no_grad():
        assert torch.allclose(qm(test[0]), qat(test[0]), rtol=1e-4, atol=1e-6)
    assert isinstance(qm, qcompiler.QuantizedModel) and qm.report().scheme == "w4-weight-only"


def test_w8a8_convert_matches_the_fake_quant_model(one_thread):
    """Activations are fake-quantized too; after training, convert gives the int8 x int8 ops the
    same values up to float32 rounding of the int32 accumulation's dequantization."""
    teacher, batch = _task()
    cal = [batch(64)[0]]
    qat = _train(qcompiler.prepare_qat(_student(), "int8-absmax", example_inputs=cal[0]), batch, 20, 1e-3)
    qm = qcompiler.convert(qat, cal)
    x = batch(256)[0]
    with torch.no_grad():
        a, b = qat(x), qm(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * a.abs().max().item())
    assert qm.report().layers[0].op == "int8 tensorxtensor"


def test_prepared_graph_is_trainable_and_annotated():
    model = _student()
    x = torch.randn(4, 32)
    qat = qcompiler.prepare_qat(model, "int8-vectorwise", example_inputs=x)
    gm = qat.graph_modules["<model>"]
    fq = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _FQ]
    assert len(fq) == 6  # W8A8: one on each weight, one on each activation
    params = dict(qat.named_parameters())
    assert len(params) == 6 and all(isinstance(p, nn.Parameter) and p.requires_grad for p in params.values())
    qat(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    assert "insert-fake-quant" in qat.pipeline and "quantize-weights" not in qat.pipeline
    qat.train()  # must not reach the exported graph, whose train() raises (it keeps its traced eval mode)
    assert qat.training and qat.model.training
    assert not qat.eval().model.training
    w4 = qcompiler.prepare_qat(model, "w4-weight-only", example_inputs=x, group_size=16)
    fq = [n for n in w4.graph_modules["<model>"].graph.nodes if n.op == "call_function" and n.target in _FQ]
    assert len(fq) == 3 and all(n.args[1:] == (4, 16, True) for n in fq)  # weights only
    before = model[0].weight.clone()
    _train(w4, _task()[1], 2, 1e-2)
    assert torch.equal(model[0].weight, before)  # prepare_qat worked on a copy


def test_straight_through_gradient():
    w = torch.randn(8, 32, requires_grad=True)
    for y in (torch.ops.qcompiler.fake_quantize_uint(w, 4, 16, False),
              torch.ops.qcompiler.fake_quantize_int8(w, True, float("inf")),
              torch.ops.qcompiler.fake_quantize_nf4(w, 16)):
        (g,) = torch.autograd.grad((y * 3.0).sum(), w)
        assert torch.equal(g, torch.full_like(w, 3.0))
        assert not torch.equal(y, w)  # the forward did quantize


def test_tiny_gpt2_round_trip(make_token_batches):
    """An HF causal LM: parameters in eager code (embeddings, norms) and in regions (the lm_head
    tied to the embedding) are all trained and all come back in convert."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2, n_positions=32,
                                       bos_token_id=0, eos_token_id=1)).eval()
    cal = make_token_batches(n=1)
    qat = qcompiler.prepare_qat(model, "w8-weight-only", example_inputs=cal[0])
    opt = torch.optim.SGD(qat.parameters(), 1e-2)
    qat.train()
    ids = cal[0]["input_ids"]
    loss = nn.functional.cross_entropy(qat(input_ids=ids).logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    qat.eval()
    qm = qcompiler.convert(qat, cal)
    with torch.no_grad():
        a, b = qat(input_ids=ids).logits, qm(input_ids=ids).logits
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    wte = qat.model.transformer.wte.weight
    assert not torch.equal(wte, model.transformer.wte.weight)  # it trained
    assert torch.equal(qm.model.transformer.wte.weight, wte)   # and came back


def test_bad_input():
    with pytest.raises(ConfigError, match="nn.Module"):
        qcompiler.prepare_qat("model", "int8-vectorwise", example_inputs=torch.randn(2, 32))
    with pytest.raises(ConfigError, match="convert takes"):
        qcompiler.convert(_student())
    with pytest.raises(ConfigError, match="no option"):
        qcompiler.prepare_qat(_student(), "w4-weight-only", example_inputs=torch.randn(2, 32), bits=3)
