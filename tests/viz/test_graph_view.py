"""The graph view: networkx structure, DOT, SVG and the HTML page (rendered in headless Chromium)."""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.viz import graph_view


def outlier_batch(rows: int = 16, features: int = 64, cols=(3, 17, 40), scale: float = 20.0, generator=None):
    """Gaussian activations with a few feature columns scaled up (LLM.int8()'s outlier pattern)."""
    x = torch.randn(rows, features, generator=generator)
    x[:, list(cols)] *= scale
    return x

CHROMIUM = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(64)
        self.q, self.k = nn.Linear(64, 64), nn.Linear(64, 64)
        self.out = nn.Linear(64, 64)

    def forward(self, x):
        h = self.norm(x)
        return x + self.out(torch.relu(self.q(h)) * self.k(h))


@pytest.fixture(scope="module")
def qm():
    g = torch.Generator().manual_seed(0)
    return qcompiler.compile(Block().eval(), "int8-outlier", [outlier_batch(generator=g) for _ in range(2)],
                             progress=False)


def test_networkx_before_and_after(qm):
    after = graph_view.to_networkx(graph_view.after(qm)[0])
    before = graph_view.to_networkx(graph_view.before(qm)[0])
    kinds_after = [d["kind"] for _, d in after.nodes(data=True)]
    kinds_before = [d["kind"] for _, d in before.nodes(data=True)]
    assert kinds_before.count("float-linear") == 3 and "int8-matmul" not in kinds_before
    assert kinds_after.count("int8-matmul") == 3 and "float-linear" not in kinds_after
    # q and k read the same normalized x with the same outlier columns: one shared quantization.
    assert kinds_after.count("quantize") == 2
    assert all(d["kind"] != "constant" for _, d in after.nodes(data=True))  # parameters folded in
    q = next(d for _, d in after.nodes(data=True) if d["kind"] == "int8-matmul" and d["layer"] == "q")
    assert any(line.startswith("outlier dims 3: 3,17,40") for line in q["label"]) and "f32[" in q["label"][1]
    import networkx as nx
    assert nx.is_directed_acyclic_graph(after) and nx.is_weakly_connected(after)


def test_dot_and_svg(qm):
    g = graph_view.to_networkx(graph_view.after(qm)[0])
    dot = graph_view.to_dot(g, "block")
    assert dot.startswith('digraph "block" {') and dot.count("subgraph cluster_") == 3
    assert dot.count("->") == g.number_of_edges()
    svg = ET.fromstring(graph_view.to_svg(g, "block"))
    nodes = svg.findall(".//{http://www.w3.org/2000/svg}g[@class='qc-node']")
    assert len(nodes) == g.number_of_nodes()
    assert {n.get("data-kind") for n in nodes} >= {"io", "quantize", "int8-matmul"}


def test_html_page_renders_in_headless_chromium(qm, tmp_path):
    page = graph_view.write_html(qm, tmp_path / "graph.html")
    text = page.read_text()
    assert "<script" in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # no fetches
    assert text.count("<svg") == 2  # before | after
    if CHROMIUM is None:
        pytest.skip("chromium not installed: apt-get install -y chromium (CI installs it)")
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    assert 'data-qc-ready="1"' in dom, "the page script did not finish"
    assert "data-qc-errors" not in dom and re.search(r'<pre id="qc-errors"></pre>', dom), dom[-2000:]
    assert dom.count('class="qc-node') >= 10
