"""CSS and JavaScript of the standalone graph page (inline: the page fetches nothing)."""

__all__ = ["PAGE_CSS", "PAGE_JS"]

PAGE_CSS = """
body { margin: 0; font: 13px Helvetica, Arial, sans-serif; color: #222; }
header { padding: 8px 14px; border-bottom: 1px solid #ddd; background: #fafafa; }
h1 { font-size: 17px; margin: 0 0 2px 0; } h2 { font-size: 13px; margin: 4px 0; }
header p { margin: 2px 0 6px 0; color: #555; word-break: break-all; }
.qc-tools { margin-bottom: 6px; } .qc-tools button { min-width: 28px; }
.qc-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 11px; color: #444; }
.qc-key i { display: inline-block; width: 12px; height: 12px; border: 1px solid #888; margin-right: 4px;
            vertical-align: -2px; }
.qc-counts { margin: 4px 14px; color: #555; }
.qc-panes { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 8px;
            padding: 0 8px; }
.qc-pane { border: 1px solid #ddd; border-radius: 4px; padding: 0 6px; min-width: 0; }
.qc-view { overflow: auto; height: calc(100vh - 215px); cursor: grab; }
.qc-node { cursor: pointer; } .qc-node:hover rect { stroke-width: 2.5; }
.qc-node.qc-hit rect { stroke: #0057d9; stroke-width: 3; }
.qc-node.qc-picked rect { stroke: #000; stroke-width: 3; }
#qc-details { position: fixed; right: 10px; bottom: 10px; max-width: 440px; max-height: 40vh; overflow: auto;
              background: #fffffff0; border: 1px solid #bbb; border-radius: 4px; padding: 6px 8px;
              white-space: pre-wrap; font: 11px Menlo, Consolas, monospace; }
#qc-errors:empty { display: none; } #qc-errors { color: #b00; }
"""

PAGE_JS = r"""
(function () {
  'use strict';
  const errors = document.getElementById('qc-errors');
  window.addEventListener('error', function (e) {
    errors.textContent += 'error: ' + e.message + '\n';
    document.body.dataset.qcErrors = '1';
  });
  let zoom = 1.0;
  const svgs = Array.from(document.querySelectorAll('svg.qc-graph'));
  svgs.forEach(function (s) {
    s.dataset.w = s.getAttribute('width');
    s.dataset.h = s.getAttribute('height');
  });
  function applyZoom() {
    svgs.forEach(function (s) {
      s.setAttribute('width', String(Math.round(parseFloat(s.dataset.w) * zoom)));
      s.setAttribute('height', String(Math.round(parseFloat(s.dataset.h) * zoom)));
    });
  }
  function visibleRegion() {
    return document.querySelector('.qc-region:not([hidden])');
  }
  function fitWidth() {
    const region = visibleRegion();
    if (!region) { return; }
    let best = 1.0;
    region.querySelectorAll('.qc-view').forEach(function (v) {
      const s = v.querySelector('svg');
      if (s) { best = Math.min(best, (v.clientWidth - 4) / parseFloat(s.dataset.w)); }
    });
    zoom = Math.max(0.1, best);
    applyZoom();
  }
  function centre(view, node) {
    if (!view || !node) { return; }
    const r = node.getBoundingClientRect(), v = view.getBoundingClientRect();
    view.scrollTop += r.top - v.top - v.height / 3;
    view.scrollLeft += r.left - v.left - v.width / 2 + r.width / 2;
  }
  function focusFirstQuantized() {
    const region = visibleRegion();
    if (!region) { return; }
    const views = region.querySelectorAll('.qc-view');
    const after = views[views.length - 1];
    const q = after.querySelector('.qc-node[data-kind="int8-matmul"], .qc-node[data-kind="weight-only"], ' +
                                  '.qc-node[data-kind="qcompiler-op"]');
    if (!q) { return; }
    centre(after, q);
    if (views.length > 1 && q.dataset.layer) {
      const same = Array.from(views[0].querySelectorAll('.qc-node')).find(function (n) {
        return n.dataset.layer === q.dataset.layer;
      });
      centre(views[0], same);
    }
  }
  document.getElementById('qc-region').addEventListener('change', function (e) {
    document.querySelectorAll('.qc-region').forEach(function (r) {
      r.hidden = r.dataset.region !== e.target.value;
    });
    focusFirstQuantized();
  });
  document.getElementById('qc-zoom-in').addEventListener('click', function () { zoom *= 1.25; applyZoom(); });
  document.getElementById('qc-zoom-out').addEventListener('click', function () { zoom /= 1.25; applyZoom(); });
  document.getElementById('qc-fit').addEventListener('click', fitWidth);
  const details = document.getElementById('qc-details');
  document.querySelectorAll('.qc-node').forEach(function (n) {
    n.addEventListener('click', function () {
      document.querySelectorAll('.qc-picked').forEach(function (p) { p.classList.remove('qc-picked'); });
      n.classList.add('qc-picked');
      const t = n.querySelector('title');
      details.textContent = t ? t.textContent : n.dataset.name;
    });
  });
  document.getElementById('qc-search').addEventListener('input', function (e) {
    const q = e.target.value.trim().toLowerCase();
    let first = null;
    document.querySelectorAll('.qc-node').forEach(function (n) {
      const hit = q.length > 0 && (n.dataset.name.toLowerCase().includes(q) ||
                                   n.dataset.layer.toLowerCase().includes(q));
      n.classList.toggle('qc-hit', hit);
      if (hit && !first && !n.closest('.qc-region').hidden) { first = n; }
    });
    if (first) { centre(first.closest('.qc-view'), first); }
  });
  document.querySelectorAll('.qc-view').forEach(function (v) {
    let drag = null;
    v.addEventListener('mousedown', function (e) { drag = [e.clientX, e.clientY, v.scrollLeft, v.scrollTop]; });
    window.addEventListener('mouseup', function () { drag = null; });
    v.addEventListener('mousemove', function (e) {
      if (drag) { v.scrollLeft = drag[2] - (e.clientX - drag[0]); v.scrollTop = drag[3] - (e.clientY - drag[1]); }
    });
  });
  fitWidth();
  if (zoom < 0.7) { zoom = 0.7; applyZoom(); }  // readable labels first; 'fit width' is a click away
  focusFirstQuantized();
  document.body.dataset.qcReady = '1';
})();
"""
