"""AWQ on plain tensors: the scale search, its normalization, and clipping."""

import pytest
import torch

from qcompiler.errors import ConfigError
from qcompiler.quant.awq import awq_clip, awq_search_scales, rows_sample
from qcompiler.quant.fake import fake_quantize_uint


def _inputs(rows=512, k=128, seed=0, loud=(2, 9, 40, 77), gain=25.0):
    """Activations where a few channels are much larger on average: AWQ's salient channels."""
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))
    x[:, list(loud)] *= gain
    return x


def _weights(n=64, k=128, seed=1):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


def _mse(x, ws, wqs):
    return sum((x @ wq.t() - x @ w.t()).square().sum().item() for w, wq in zip(ws, wqs)) / \
        sum(x.shape[0] * w.shape[0] for w in ws)


def test_alpha_zero_is_round_to_nearest_and_the_search_never_loses_to_it():
    x, ws = _inputs(), [_weights(seed=1), _weights(n=32, seed=2)]
    res = awq_search_scales(x, ws, 4, 32, False, n_grid=10)
    rtn = _mse(x, ws, [fake_quantize_uint(w, 4, 32, False) for w in ws])
    assert res.loss_rtn == pytest.approx(rtn, rel=1e-4)  # alpha = 0: s = 1
    assert res.loss <= res.loss_rtn
    # the search's loss is what the scaled layers really compute: (x / s) @ Q(W * s)^T
    s = res.scales
    direct = _mse(x, ws, [fake_quantize_uint(w * s, 4, 32, False) / s for w in ws])
    assert res.loss == pytest.approx(direct, rel=1e-4)


def test_salient_channels_get_larger_scales_and_a_smaller_error():
    x, w = _inputs(), _weights()
    res = awq_search_scales(x, [w], 4, 32, False)
    assert 0 < res.alpha < 1
    # measured ~0.45x of RTN on this data; 0.8 still fails a search that returns s = 1
    assert res.loss < 0.8 * res.loss_rtn, (res.loss, res.loss_rtn)
    loud = torch.tensor([2, 9, 40, 77])
    quiet = torch.ones(128, dtype=torch.bool)
    quiet[loud] = False
    assert res.scales[loud].min() > res.scales[quiet].max()
    # normalized so that sqrt(max * min) = 1 (the reference implementation's choice)
    assert (res.scales.max() * res.scales.min()).sqrt().item() == pytest.approx(1.0, rel=1e-5)


def test_uniform_activations_choose_no_scaling():
    """All channels alike: there is nothing to protect and any s != 1 can only cost accuracy
    beyond noise; the search must not find a large gain."""
    x, w = torch.randn(512, 128, generator=torch.Generator().manual_seed(3)), _weights()
    res = awq_search_scales(x, [w], 4, 32, True)
    assert res.loss > 0.9 * res.loss_rtn


@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_lowers_the_error_and_stays_in_range(symmetric):
    x, w = _inputs(loud=()), _weights(seed=4)
    w[:, 5] *= 12.0  # a few large weights stretch the groups' ranges: clipping them pays
    clipped = awq_clip(x, w, 4, 32, symmetric)
    e_plain = _mse(x, [w], [fake_quantize_uint(w, 4, 32, symmetric)])
    e_clip = _mse(x, [w], [fake_quantize_uint(clipped, 4, 32, symmetric)])
    assert e_clip < e_plain
    assert (clipped.abs() <= w.abs() + 1e-7).all() and (torch.sign(clipped) * torch.sign(w) >= 0).all()
    # ratio 1.0 is a candidate: with no outlying weights the clip may do nothing, never worse
    plain = _weights(seed=5)
    assert _mse(x, [plain], [fake_quantize_uint(awq_clip(x, plain, 4, 32, symmetric), 4, 32, symmetric)]) <= \
        _mse(x, [plain], [fake_quantize_uint(plain, 4, 32, symmetric)]) * (1 + 1e-6)


def test_rows_sample_is_deterministic_and_bounded():
    x = torch.arange(100.0).reshape(100, 1)
    assert rows_sample(x, 10).shape == (10, 1) and rows_sample(x, 10)[0, 0] == 0 and rows_sample(x, 10)[-1, 0] == 99
    assert rows_sample(x, 1000) is x


def test_bad_grid():
    with pytest.raises(ConfigError, match="n_grid"):
        awq_search_scales(torch.randn(4, 8), [torch.randn(2, 8)], 4, 8, n_grid=0)
