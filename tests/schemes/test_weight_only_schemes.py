"""w8-weight-only, w4-weight-only and nf4 through ``qcompiler.compile``: HF causal LMs, the real
MiniLM, exact packed sizes in the report, config errors, and the materialize helper for GPTQ/AWQ."""

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.graph.nodes import is_linear
from qcompiler.passes.quantize_weights import materialize_uint
from qcompiler.quant import dequantize_uint, quantize_uint
from qcompiler.spec import get_spec

WO_OPS = (torch.ops.qcompiler.weight_only_linear.default, torch.ops.qcompiler.nf4_linear.default)
SCHEMES = ["w8-weight-only", "w4-weight-only", "nf4"]
# relative logit error on random-weight tiny models: int8 ~1%, 4-bit RTN/NF4 ~15%
MAX_REL = {"w8-weight-only": 0.03, "w4-weight-only": 0.3, "nf4": 0.3}


def _op_nodes(qm):
    return [n for gm in qm.graph_modules.values() for n in gm.graph.nodes
            if n.op == "call_function" and n.target in WO_OPS]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_causal_lm(arch, scheme, make_tiny_hf, make_token_batches):
    model = make_tiny_hf(arch)
    qm = qcompiler.compile(model, scheme, example_inputs=make_token_batches(n=1)[0], verify=True, progress=False)
    rep = qm.report()
    assert len(rep.quantized) == len(rep.layers) == len(_op_nodes(qm))  # every linear is a weight-only op
    assert not any(is_linear(n) for gm in qm.graph_modules.values() for n in gm.graph.nodes)
    ids = torch.randint(3, 256, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, qm(input_ids=ids).logits
    assert ((out - ref).norm() / ref.norm()).item() < MAX_REL[scheme]
    gen = qm.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert gen.shape == (1, 9)


@pytest.mark.parametrize("scheme,opts,min_mean", [
    ("w8-weight-only", {}, 0.9995),
    ("w4-weight-only", {"symmetric": False}, 0.985),
    ("nf4", {"double_quant": True}, 0.99),
])
def test_minilm_embeddings(minilm_2l, embedding_cosine, scheme, opts, min_mean):
    qm = qcompiler.compile(minilm_2l["model"], scheme, example_inputs=minilm_2l["cal"][0], progress=False, **opts)
    cos = embedding_cosine(qm)
    print(f"{scheme} {opts}: cosine mean {cos.mean():.5f} min {cos.min():.5f}")
    # thresholds a little under what the 2-layer cut measures (real weights, unseen sentences)
    assert cos.mean() >= min_mean and cos.min() >= min_mean - 0.01


@pytest.mark.parametrize("scheme,opts,bytes_per_row", [
    # N = 24, K = 200: codes + float32 scales (+ uint8 zeros) per output row, exactly
    ("w8-weight-only", {}, 200 + 4),
    ("w8-weight-only", {"group_size": 64, "symmetric": False}, 200 + 4 * 4 + 4),
    ("w4-weight-only", {}, 100 + 2 * 4),                                 # 2 groups of 128 (the last ragged)
    ("w4-weight-only", {"group_size": 32, "symmetric": False}, 100 + 7 * 4 + 7),
    ("nf4", {}, 100 + 4 * 4),                                            # 4 blocks of 64
])
def test_report_counts_packed_bytes(scheme, opts, bytes_per_row):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 24), nn.ReLU(), nn.Linear(24, 8)).eval()
    qm = qcompiler.compile(model, scheme, [torch.randn(4, 200)], progress=False, verify=True, **opts)
    row = qm.report().layers[0]
    assert row.bytes_before == 24 * 200 * 4 and row.bytes_after == 24 * bytes_per_row
    assert row.sqnr_db is not None and row.sqnr_db > (30 if "w8" in scheme else 12)


def test_nf4_double_quant_bytes():
    model = nn.Linear(1024, 256).eval()  # 4096 absmax values -> 16 second-level scales
    qm = qcompiler.compile(model, "nf4", example_inputs=torch.randn(2, 1024), progress=False, double_quant=True)
    row = qm.report().layers[0]
    assert row.op == "nf4 weight-only b64 +dq"
    assert row.bytes_after == 256 * 512 + 4096 * 1 + 16 * 4 + 4


@pytest.mark.parametrize("scheme,opts,match", [
    ("w4-weight-only", {"group_size": -1}, "group_size"),
    ("w4-weight-only", {"bits": 3}, "no option 'bits'"),
    ("nf4", {"double_quant": "yes"}, "double_quant"),
    ("w8-weight-only", {"group_size": 1.5}, "group_size"),
])
def test_config_errors(scheme, opts, match):
    with pytest.raises(qcompiler.ConfigError, match=match):
        qcompiler.compile(nn.Linear(8, 8), scheme, example_inputs=torch.randn(1, 8), **opts)


def test_pipeline_text():
    text = qcompiler.pipeline_for("w4-weight-only", calibrated=False, symmetric=False)
    expected = ("canonicalize-linear,annotate-linears{act=none},annotate-weight-format{format=uint,bits=4,"
                "group_size=128,symmetric=false,double_quant=false},quantize-weights,decompose-matmul,"
                "share-activation-quant,dce")
    assert qcompiler.parse_pipeline(text) == qcompiler.parse_pipeline(expected)  # and it parses back


class _Materialize(qcompiler.GraphPass):
    """What a GPTQ/AWQ pass does at the end: hand precomputed codes to materialize_uint."""

    def run(self, gm, ctx):
        for node in gm.graph.nodes:
            if get_spec(node) is not None and node.op == "call_function":
                spec = get_spec(node)
                codes = torch.arange(spec.out_features * spec.in_features).reshape(spec.out_features, -1) % 16
                scales = torch.full((spec.out_features, -(-spec.in_features // 4)), 0.5)
                zeros = torch.full_like(scales, 3, dtype=torch.uint8)
                materialize_uint(gm, node, codes.to(torch.uint8), scales, zeros, ctx)
        return qcompiler.PassResult(gm, modified=True)


def test_materialize_uint_is_what_quantize_weights_keeps():
    qcompiler.register_pass("test-materialize")(_Materialize)
    model = nn.Linear(10, 6, bias=False).eval()
    qm = qcompiler.compile(model, "w4-weight-only", example_inputs=torch.randn(2, 10), verify=True, progress=False,
                           pipeline="canonicalize-linear,annotate-linears{act=none},annotate-weight-format{format=uint,"
                                    "bits=4,group_size=4,symmetric=false},test-materialize,quantize-weights,"
                                    "decompose-matmul,dce")
    codes = (torch.arange(60).reshape(6, 10) % 16).to(torch.uint8)
    w = dequantize_uint(codes, torch.full((6, 3), 0.5), torch.full((6, 3), 3, dtype=torch.uint8), 4, 4)
    x = torch.randn(3, 10)
    assert torch.allclose(qm(x), x @ w.t())  # exactly the given codes, not a re-quantization


def test_materialize_uint_checks_shapes():
    model = nn.Linear(10, 6).eval()
    qm = qcompiler.compile(model, "w4-weight-only", example_inputs=torch.randn(2, 10), progress=False,
                           pipeline="canonicalize-linear,annotate-linears{act=none},annotate-weight-format")
    gm = qm.graph_modules["<model>"]
    node = next(n for n in gm.graph.nodes if get_spec(n) is not None)
    u = quantize_uint(torch.randn(6, 10), 4, 128, True)
    with pytest.raises(qcompiler.UnsupportedError, match="scales must be"):
        materialize_uint(gm, node, u.codes, u.scales[:, :0], None)
    with pytest.raises(qcompiler.UnsupportedError, match="zero points"):
        materialize_uint(gm, node, u.codes, u.scales, torch.zeros_like(u.scales, dtype=torch.uint8))
    with pytest.raises(qcompiler.UnsupportedError, match="0..15"):
        materialize_uint(gm, node, u.codes + 16, u.scales, None)
    assert materialize_uint(gm, node, u.codes, u.scales, None).weights is not None
