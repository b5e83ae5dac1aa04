"""smooth-shared (and awq's shared groups): one scale per activation that several regions read,
folded into the eager norm that produced it; refused where another reader would notice."""

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.graph.nodes import is_linear, linear_parts, resolve_weight
from qcompiler.spec import get_spec

SHARED_ONLY = "canonicalize-linear,annotate-linears,calibrate,smooth-shared{alpha=0.5}," \
              "smooth{alpha=0.5,fold=true,unfoldable=%s}"
CAL = [{"input_ids": torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(i))} for i in range(2)]
IDS = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(7))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _weights(qm):
    """{layer: float weight the graph multiplies by} of every annotated linear."""
    out = {}
    for gm in qm.graph_modules.values():
        for n in gm.graph.nodes:
            if is_linear(n) and get_spec(n) is not None:
                out[get_spec(n).layer] = resolve_weight(gm, linear_parts(n)[1])[0]
    return out


@pytest.fixture
def model(llama_dir):
    return llama_dir[0]  # the root conftest's tiny Llama (outlier norm channels)


@pytest.mark.parametrize("unfoldable", ["skip", "mul"])
def test_qkv_share_one_scale_folded_into_input_layernorm(model, unfoldable):
    qm = qcompiler.compile(model, "w8a8-smoothquant", CAL, pipeline=SHARED_ONLY % unfoldable, verify=True,
                           progress=False)
    with torch.no_grad():
        # float weights rescaled, norm divided: the same function up to float32 rounding
        assert _rel(qm(input_ids=IDS).logits, model(input_ids=IDS).logits) <= 1e-5
    kinds = {get_spec(n).layer: get_spec(n).smoothing for gm in qm.graph_modules.values()
             for n in gm.graph.nodes if is_linear(n) and get_spec(n) is not None}
    for i in range(2):
        p = f"model.layers.{i}."
        assert {kinds[p + f"self_attn.{x}_proj"] for x in "qkv"} == {"outer-norm"}
        assert kinds[p + "mlp.gate_proj"] == kinds[p + "mlp.up_proj"] == "outer-norm"
        assert kinds[p + "mlp.down_proj"] == "linear"                   # into up_proj's rows
        assert kinds[p + "self_attn.o_proj"] == (None if unfoldable == "skip" else "mul")
    assert kinds["lm_head"] == (None if unfoldable == "skip" else "mul")  # it reads a slice of model.norm's output
    # one s for q, k and v: W_new / W_old is the same column vector for all three, and the norm is w / s
    w_old = dict(model.named_parameters())
    w_new = _weights(qm)
    p = "model.layers.0.self_attn."
    s = w_new[p + "q_proj"][0] / w_old[p + "q_proj.weight"][0]
    for x in "qkv":
        ratio = w_new[p + f"{x}_proj"] / w_old[p + f"{x}_proj.weight"]
        torch.testing.assert_close(ratio, s.expand_as(ratio), rtol=1e-5, atol=1e-6)
    norm = qm.model.model.layers[0].input_layernorm.weight
    torch.testing.assert_close(norm, w_old["model.layers.0.input_layernorm.weight"] / s, rtol=1e-5, atol=1e-6)
    assert not torch.equal(s, torch.ones_like(s))
    # the caller's float model is untouched
    assert torch.equal(model.model.layers[0].input_layernorm.weight, w_old["model.layers.0.input_layernorm.weight"])


def test_no_explicit_mul_in_any_graph_with_foldable(model):
    qm = qcompiler.compile(model, "w8a8-smoothquant", CAL, progress=False, smooth="foldable")
    muls = [n for gm in qm.graph_modules.values() for n in gm.graph.nodes
            if n.op == "get_attr" and "inv_s" in str(n.target)]
    assert muls == []
    notes = {r.layer: r.notes for r in qm.report().layers}
    assert any("1/s folded into 'model.layers.1.input_layernorm'" in n for n in notes["model.layers.1.self_attn.k_proj"])
    assert any(n.startswith("not smoothed: nothing absorbs") for n in notes["model.layers.0.self_attn.o_proj"])


class _Gemma(nn.Module):
    """(1 + w) * x / rms: not linear in its weight, so 1/s cannot go into w."""

    def __init__(self, k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k) * 0.1)

    def forward(self, x):
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class _Block(nn.Module):
    """norm -> two linears (two regions); ``leak`` also adds the norm's output to the result."""

    def __init__(self, norm, leak=False):
        super().__init__()
        self.norm, self.a, self.b, self.leak = norm, nn.Linear(16, 8), nn.Linear(16, 8), leak
        self.cache = None

    def forward(self, x, cache=None):  # the cache object keeps the block itself from being captured
        h = self.norm(x)
        y = self.a(h) + self.b(h)
        return y + h[..., :8] if self.leak else y


@pytest.mark.parametrize("norm,leak,why", [
    (lambda: _Gemma(16), False, "is not linear in its weight"),
    (lambda: nn.LayerNorm(16), True, "also read by"),
])
def test_unfoldable_producer_is_left_alone_and_named(norm, leak, why):
    torch.manual_seed(0)
    model = _Block(norm(), leak).eval()
    with torch.no_grad():
        model.norm.weight.mul_(3).add_(torch.linspace(0, 4, 16))
    cal = [{"x": torch.randn(3, 16) * torch.linspace(1, 20, 16), "cache": {"k": 1}} for _ in range(2)]
    qm = qcompiler.compile(model, "w8a8-smoothquant", cal, pipeline=SHARED_ONLY % "skip", progress=False)
    assert sorted(r.path for r in qm.program.regions) == ["a", "b"]
    rows = {r.layer: r for r in qm.report().layers}
    kinds = [get_spec(n).smoothing for gm in qm.graph_modules.values() for n in gm.graph.nodes
             if is_linear(n) and get_spec(n) is not None]
    assert kinds == [None, None]  # not smoothed: nothing folds
    assert any(n.startswith("smoothing not shared") and why in n for n in rows["a"].notes), rows["a"].notes
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert _rel(qm(x), model(x)) <= 1e-6


def test_awq_searches_qkv_jointly_and_folds_into_the_norm(model):
    qm = qcompiler.compile(model, "awq-w4", CAL, progress=False, verify=True, group_size=32, symmetric=True)
    notes = {r.layer: r.notes for r in qm.report().layers}
    p = "model.layers.0.self_attn."
    texts = [next(n for n in notes[p + f"{x}_proj"] if n.startswith("awq:")) for x in "qkv"]
    assert len(set(texts)) == 1 and "'model.layers.0.input_layernorm' (shared by q_proj, k_proj, v_proj)" in texts[0]
    o_notes = [n for n in notes[p + "o_proj"] if n.startswith("awq:")]
    assert any("scale not searched" in n for n in o_notes) and any("grouped-query attention" in n for n in o_notes)
    assert not torch.equal(qm.model.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight)
    muls = [n for gm in qm.graph_modules.values() for n in gm.graph.nodes
            if n.op == "get_attr" and "inv_s" in str(n.target)]
    assert muls == []


def _mha_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, bos_token_id=0,
                                         eos_token_id=1, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[[3, 17, 40]] = 8.0
    return model


def test_o_proj_folds_into_v_proj_rows_without_gqa():
    model = _mha_llama()
    qm = qcompiler.compile(model, "w8a8-smoothquant", CAL, pipeline=SHARED_ONLY % "skip", verify=True, progress=False)
    with torch.no_grad():
        assert _rel(qm(input_ids=IDS).logits, model(input_ids=IDS).logits) <= 1e-5  # the same float function
    rows = {r.layer: r for r in qm.report().layers}
    o = "model.layers.1.self_attn.o_proj"
    assert any("folded into the rows of 'model.layers.1.self_attn.v_proj'" in n for n in rows[o].notes)
    kinds = {get_spec(n).layer: get_spec(n).smoothing for gm in qm.graph_modules.values()
             for n in gm.graph.nodes if is_linear(n) and get_spec(n) is not None}
    assert kinds[o] == "linear" and kinds["model.layers.1.self_attn.v_proj"] == "outer-norm"


def test_o_proj_not_folded_with_gqa_says_why(model):
    qm = qcompiler.compile(model, "w8a8-smoothquant", CAL, pipeline=SHARED_ONLY % "skip", progress=False)
    notes = {r.layer: r.notes for r in qm.report().layers}["model.layers.0.self_attn.o_proj"]
    assert any("grouped-query attention" in n for n in notes), notes


def test_awq_folds_o_proj_into_v_proj_without_gqa(tmp_path):
    from transformers import AutoModelForCausalLM
    model = _mha_llama()
    qm = qcompiler.compile(model, "awq-w4", CAL, progress=False, verify=True, group_size=32, symmetric=True)
    note = next(n for r in qm.report().layers if r.layer == "model.layers.0.self_attn.o_proj" for n in r.notes
                if n.startswith("awq:"))
    assert "the rows of 'model.layers.0.self_attn.v_proj' (v -> o)" in note or "alpha = 0" in note, note
    out = qcompiler.save(qm, tmp_path / "ct", format="compressed-tensors", float_layers=())
    hf = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():  # v's rows hold o's 1/s in the written codes
        torch.testing.assert_close(hf(input_ids=IDS).logits, qm(input_ids=IDS).logits, rtol=1e-4, atol=1e-4)
