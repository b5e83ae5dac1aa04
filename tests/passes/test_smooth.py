"""``smooth`` (SmoothQuant) and the scale-fold analysis: the float function is unchanged before
quantization, 1/s lands in the op the graph allows, and smoothing helps int8 on outlier inputs."""

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.passes.smooth import smoothing_factors
from qcompiler.spec import get_spec

SMOOTH_ONLY = "canonicalize-linear,annotate-linears,calibrate,smooth{alpha=0.5,fold=%s}"


class PreLNMLP(nn.Module):
    """LayerNorm -> gate/up -> relu(gate) * up -> down, with a few loud LayerNorm channels (the
    activation-outlier pattern SmoothQuant targets)."""

    def __init__(self, d=64, h=96, outliers=(3, 17, 40)):
        super().__init__()
        self.ln, self.gate, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, d)
        with torch.no_grad():
            self.ln.weight[list(outliers)] = 25.0
            self.ln.bias.normal_()

    def forward(self, x):
        h = self.ln(x)
        return x + self.down(torch.relu(self.gate(h)) * self.up(h))


class RMSNorm(nn.Module):
    """Hugging Face's RMSNorm: exports as pow/mean/rsqrt/mul and a final ``weight * x``."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + 1e-6)).to(x.dtype)


class RMSAttnIn(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.norm, self.q, self.k = RMSNorm(d), nn.Linear(d, d, bias=False), nn.Linear(d, 32, bias=False)

    def forward(self, x):
        h = self.norm(x)
        return self.q(h).sum(-1) + self.k(h).sum(-1)


class PostLN(nn.Module):
    """BERT-style: the LayerNorm output also feeds the residual, so it cannot absorb 1/s."""

    def __init__(self, d=64):
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        h = self.ln(x)
        return h + self.fc(h)


def _data(d=64, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 8, d, generator=g) for _ in range(n)], torch.randn(3, 8, d, generator=g)


def _kinds(qm):
    return {get_spec(n).layer: get_spec(n).smoothing for gm in qm.graph_modules.values()
            for n in gm.graph.nodes if get_spec(n) is not None}


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("fold", ["true", "false"])
@pytest.mark.parametrize("make,kinds", [
    (PreLNMLP, {"gate": "norm", "up": "norm", "down": "linear"}),
    (RMSAttnIn, {"q": "norm", "k": "norm"}),
    (PostLN, {"fc": "mul"}),
])
def test_smoothing_preserves_the_float_function(make, kinds, fold):
    torch.manual_seed(0)
    model = make().eval()
    cal, x = _data()
    qm = qcompiler.compile(model, "w8a8-smoothquant", cal, pipeline=SMOOTH_ONLY % fold, verify=True, progress=False)
    with torch.no_grad():
        # (x / s) @ (W * s).T is x @ W.T up to float32 rounding of the rescaled operands
        assert _rel(qm(x), model(x)) <= 1e-5
    expected = kinds if fold == "true" else {k: "mul" for k in kinds}
    assert _kinds(qm) == expected


def test_explicit_mul_says_why_in_the_report():
    cal, _ = _data()
    qm = qcompiler.compile(PostLN().eval(), "w8a8-smoothquant", cal, progress=False, smooth="all")
    row = next(r for r in qm.report().layers if r.layer == "fc")
    assert row.op == "int8 rowxchannel +smooth:mul"
    assert any("smoothing not folded" in n and "'layer_norm' is also read by" in n for n in row.notes), row.notes


def test_hf_llama_whole_graph_folds_into_rmsnorm_and_up_proj(make_tiny_hf, make_token_batches):
    """With use_cache=False a tiny Llama captures as one graph: the decomposed RMSNorm weights take
    1/s for q/k/v and gate/up, up_proj's rows take it for down_proj; o_proj (after the attention
    reshape) gets an explicit mul."""
    model = make_tiny_hf("llama")
    cal = [dict(b, use_cache=False) for b in make_token_batches(n=2)]
    qm = qcompiler.compile(model, "w8a8-smoothquant", cal, pipeline=SMOOTH_ONLY % "true", progress=False)
    kinds = _kinds(qm)
    for layer in range(2):
        p = f"model.layers.{layer}."
        assert {kinds[p + f"self_attn.{n}_proj"] for n in "qkv"} == {"norm"}
        assert kinds[p + "mlp.gate_proj"] == kinds[p + "mlp.up_proj"] == "norm"
        assert kinds[p + "mlp.down_proj"] == "linear"
        assert kinds[p + "self_attn.o_proj"] == "mul"
    ids = cal[0]["input_ids"]
    with torch.no_grad():
        assert _rel(qm(input_ids=ids, use_cache=False).logits, model(input_ids=ids, use_cache=False).logits) <= 1e-5


def test_smoothing_factors():
    ax = torch.tensor([16.0, 1.0, 0.0, 4.0])
    aw = torch.tensor([0.25, 1.0, 2.0, 0.0])
    s = smoothing_factors(ax, aw, 0.5)
    assert torch.allclose(s, torch.tensor([8.0, 1.0, 1.0, 1.0]))  # sqrt(16) / sqrt(0.25); 1 where a max is 0
    assert torch.allclose(smoothing_factors(ax[:2], aw[:2], 1.0), torch.tensor([16.0, 1.0]))


def test_smoothquant_beats_vectorwise_on_activation_outliers():
    torch.manual_seed(0)
    model = PreLNMLP().eval()
    cal, _ = _data(n=4, seed=1)
    _, x = _data(seed=2)  # held-out inputs
    with torch.no_grad():
        ref = model(x)
        errs = {s: _rel(qcompiler.compile(model, s, cal, progress=False)(x), ref)
                for s in ("int8-vectorwise", "w8a8-smoothquant")}
    # the loud LayerNorm channels dominate each row's int8 scale without smoothing
    print(errs)
    assert errs["w8a8-smoothquant"] < 0.6 * errs["int8-vectorwise"], errs


def test_alpha_is_validated():
    with pytest.raises(qcompiler.ConfigError, match="alpha"):
        qcompiler.compile(PostLN(), "w8a8-smoothquant", _data()[0], alpha=1.5)
    with pytest.raises(qcompiler.ConfigError, match="needs calibration data"):
        qcompiler.compile(PostLN(), "w8a8-smoothquant", example_inputs=torch.randn(2, 64))
