"""The matplotlib plots: files are written, are PNGs, and reflect the data they were given."""

import pytest
import torch
from torch import nn

import qcompiler


def outlier_batch(rows: int = 16, features: int = 64, cols=(3, 17, 40), scale: float = 20.0, generator=None):
    """Gaussian activations with a few feature columns scaled up (LLM.int8()'s outlier pattern)."""
    x = torch.randn(rows, features, generator=generator)
    x[:, list(cols)] *= scale
    return x

plots = pytest.importorskip("qcompiler.viz.plots", reason="needs matplotlib (pip install matplotlib)")
pytest.importorskip("matplotlib", reason="needs matplotlib (pip install matplotlib)")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32)).eval()
    g = torch.Generator().manual_seed(0)
    calib = [outlier_batch(rows=16, generator=g) for _ in range(3)]
    return model, {s: qcompiler.compile(model, s, calib, progress=False)
                   for s in ("int8-outlier", "int8-vectorwise", "int8-absmax")}


def _png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5000
    return data


def test_outlier_features_from_calibration_stats(compiled, tmp_path):
    qm = compiled[1]["int8-outlier"]
    absmax = qm.record.calibration_absmax["0"]
    assert absmax.shape == (64,) and set(torch.nonzero(absmax > 6).flatten().tolist()) == {3, 17, 40}
    _png(plots.plot_outlier_features(absmax, tmp_path / "o.png", threshold=6.0, layer="0"))


def test_scheme_errors_side_by_side(compiled, tmp_path):
    reports = {s: qm.report() for s, qm in compiled[1].items()}
    # The point of the picture: with outlier columns, decomposition beats per-tensor absmax.
    sq = {s: r.layers[0].sqnr_db for s, r in reports.items()}
    assert sq["int8-outlier"] > sq["int8-vectorwise"] > sq["int8-absmax"]
    _png(plots.plot_scheme_errors(reports, tmp_path / "e.png"))


def test_quantization_grid_of_a_real_row(compiled, tmp_path):
    row = compiled[0][0].weight[5]
    _png(plots.plot_quantization_grid(row, tmp_path / "g.png", name="0.weight[5]"))
    with pytest.raises(qcompiler.ConfigError):
        plots.plot_quantization_grid(torch.zeros(8), tmp_path / "z.png")


def test_quantize_with_scale_matches_the_seed_figure():
    # The seed's 4x4 X, its max |X| = 1.78 and the three scaling factors it shows (4-bit, -7..7).
    x = torch.tensor([[0.51, 0.21, -0.13, -0.16], [-0.23, 0.19, -0.14, 0.53],
                      [0.17, 0.28, -0.44, -0.34], [-0.42, 0.02, 1.78, -0.22]])
    q, _ = plots.quantize_with_scale(x, 1.78, bits=4)
    assert q.tolist() == [[2, 1, -1, -1], [-1, 1, -1, 2], [1, 1, -2, -1], [-2, 0, 7, -1]]
    q3, _ = plots.quantize_with_scale(x, 3.0, bits=4)
    assert q3[3, 2] == 4 and q3[0, 0] == 1
    _, deq = plots.quantize_with_scale(x, 0.8, bits=4)
    assert abs(float(x[3, 2] - deq[3, 2]) - 0.98) < 1e-6  # clipped: the seed's "98.00 x 10^-2"


def test_short_layer_names():
    assert plots.short_layer_names(["m.layers.0.mlp.up", "m.layers.1.mlp.up"]) == ["0.mlp.up", "1.mlp.up"]
