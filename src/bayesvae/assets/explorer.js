(function () {
  'use strict';
  var dataEl = document.getElementById('explorer-data');
  if (!dataEl) { return; }
  var D = JSON.parse(dataEl.textContent);
  var plane = document.getElementById('explorer-plane');
  var out = document.getElementById('explorer-output');
  var readout = document.getElementById('explorer-readout');
  var sprite = document.getElementById('explorer-sprite');
  var pc = plane.getContext('2d'), oc = out.getContext('2d');
  var G = D.grid, W = plane.width, H = plane.height, PI = Math.PI;
  // Geometry: 'plane' (two latent coordinates in [-span, span]), 'angles' (azimuth and elevation on the sphere
  // S^2 spanned by three latent dimensions) or 'circle' (the angle on S^1; the lattice is read row by row).
  var geo = D.geometry || 'plane', S = D.span || 3;
  var X = D.x || {lo: -S, hi: S}, Y = D.y || {lo: -S, hi: S};
  var state = {cell: -1, row: -1, col: -1, z: [0, 0]};
  window.bayesvaeExplorer = state;
  function toPx(zx, zy) {
    if (geo === 'circle') {
      var r = 0.4 * Math.min(W, H) * (zy || 1);
      return [W / 2 + r * Math.cos(zx), H / 2 - r * Math.sin(zx)];
    }
    return [(zx - X.lo) / (X.hi - X.lo) * W, (Y.hi - zy) / (Y.hi - Y.lo) * H];
  }
  function fmt(v) { return (v < 0 ? '\u2212' : '') + Math.abs(v).toFixed(2); }
  function drawAxes() {
    pc.strokeStyle = '#e2e2e2'; pc.lineWidth = 1; pc.fillStyle = '#555'; pc.font = '11px sans-serif';
    if (geo === 'circle') {
      pc.strokeStyle = '#b5b5b5';
      pc.beginPath(); pc.arc(W / 2, H / 2, 0.4 * Math.min(W, H), 0, 2 * PI); pc.stroke();
      for (var a = -2; a <= 2; a++) {
        var t = toPx(a * PI / 2, 1.12);
        if (a > -2) { pc.fillText(['\u2212\u03c0/2', '0', '\u03c0/2', '\u03c0'][a + 1], t[0] - 10, t[1] + 4); }
      }
      pc.fillText('\u03b8 (z' + D.dims[0] + ' = cos \u03b8, z' + D.dims[1] + ' = sin \u03b8)', 6, 14);
      return;
    }
    var step = geo === 'angles' ? PI / 4 : 1, t0;
    for (t0 = Math.ceil(X.lo / step) * step; t0 <= X.hi + 1e-9; t0 += step) {
      var px = toPx(t0, 0)[0];
      pc.beginPath(); pc.moveTo(px, 0); pc.lineTo(px, H); pc.stroke();
    }
    for (t0 = Math.ceil(Y.lo / step) * step; t0 <= Y.hi + 1e-9; t0 += step) {
      var py = toPx(0, t0)[1];
      pc.beginPath(); pc.moveTo(0, py); pc.lineTo(W, py); pc.stroke();
    }
    pc.strokeStyle = '#b5b5b5';
    var o = toPx(0, 0);
    pc.beginPath(); pc.moveTo(o[0], 0); pc.lineTo(o[0], H); pc.moveTo(0, o[1]); pc.lineTo(W, o[1]); pc.stroke();
    if (geo === 'angles') {
      pc.fillText('\u03c6 \u2192 (' + X.label + ')', W - 118, o[1] - 4);
      pc.fillText('\u03bb \u2191 (' + Y.label + ')', o[0] + 4, 12);
      return;
    }
    for (var u = 1 - Math.ceil(S); u < Math.ceil(S); u++) {
      if (u === 0) { continue; }
      var tp = toPx(u, u);
      pc.fillText(String(u), tp[0] - 4, H - 4);
      pc.fillText(String(u), 3, tp[1] + 4);
    }
    pc.fillText('z' + D.dims[0] + ' \u2192', W - 42, o[1] - 4);
    pc.fillText('z' + D.dims[1] + ' \u2191', o[0] + 4, 12);
  }
  function drawPlane(mark) {
    pc.fillStyle = '#fafafa'; pc.fillRect(0, 0, W, H);
    drawAxes();
    var pts = D.points || [], labs = D.labels;
    pc.globalAlpha = 0.75;
    for (var k = 0; k < pts.length; k++) {
      var q = toPx(pts[k][0], pts[k][1]);
      if (q[0] < 0 || q[0] > W || q[1] < 0 || q[1] > H) { continue; }
      pc.fillStyle = labs ? D.colors[labs[k] % D.colors.length] : '#1f77b4';
      pc.beginPath(); pc.arc(q[0], q[1], 2.2, 0, 2 * Math.PI); pc.fill();
    }
    pc.globalAlpha = 1;
    if (mark) {
      var m = toPx(mark[0], geo === 'circle' ? 1 : mark[1]);
      pc.strokeStyle = '#000'; pc.lineWidth = 1.5;
      pc.beginPath(); pc.moveTo(m[0] - 8, m[1]); pc.lineTo(m[0] + 8, m[1]);
      pc.moveTo(m[0], m[1] - 8); pc.lineTo(m[0], m[1] + 8); pc.stroke();
    }
  }
  function drawImageCell(row, col) {
    oc.imageSmoothingEnabled = false;
    oc.fillStyle = '#fff'; oc.fillRect(0, 0, out.width, out.height);
    var s = Math.max(1, Math.floor(Math.min(out.width / D.width, out.height / D.height)));
    var w = D.width * s, h = D.height * s;
    oc.drawImage(sprite, col * D.width, row * D.height, D.width, D.height,
                 Math.floor((out.width - w) / 2), Math.floor((out.height - h) / 2), w, h);
  }
  function drawBars(cell) {
    var v = D.values[cell], n = v.length, rowH = Math.max(12, Math.min(26, Math.floor((out.height - 10) / n)));
    if (out.height !== n * rowH + 10) { out.height = n * rowH + 10; }
    oc.fillStyle = '#fff'; oc.fillRect(0, 0, out.width, out.height);
    var x0 = 130, x1 = out.width - 90;
    oc.font = '11px sans-serif'; oc.textBaseline = 'middle';
    for (var f = 0; f < n; f++) {
      var y = 5 + f * rowH, lo = D.lo[f], hi = D.hi[f], span = (hi - lo) || 1;
      var sx = function (val) { return x0 + (val - lo) / span * (x1 - x0); };
      oc.fillStyle = '#333'; oc.textAlign = 'right';
      oc.fillText(String(D.names[f]).slice(0, 18), x0 - 8, y + rowH / 2);
      oc.fillStyle = '#e6e6e6'; oc.fillRect(sx(D.p1[f]), y + 3, sx(D.p99[f]) - sx(D.p1[f]), rowH - 6);
      var a = sx(D.mean[f]), b = sx(v[f]);
      oc.fillStyle = '#1f77b4'; oc.fillRect(Math.min(a, b), y + 5, Math.max(2, Math.abs(b - a)), rowH - 10);
      oc.fillStyle = '#000'; oc.fillRect(a - 0.5, y + 1, 1.5, rowH - 2);
      oc.textAlign = 'left'; oc.fillStyle = '#333';
      oc.fillText(Number(v[f]).toPrecision(4), x1 + 8, y + rowH / 2);
    }
  }
  function show(zx, zy) {
    var row, col, cell, gz, text;
    if (geo === 'circle') {  // zx is the angle; the G*G lattice holds angles -pi..pi in reading order
      var n = G * G, k = Math.round((zx + PI) / (2 * PI) * (n - 1));
      k = Math.max(0, Math.min(n - 1, k));
      row = Math.floor(k / G); col = k % G; cell = k;
      gz = [-PI + 2 * PI * k / (n - 1), 1];
      text = '\u03b8 = ' + fmt(gz[0]) + ' rad <span class="muted">(z = (cos \u03b8, sin \u03b8); lattice point ' + k +
        ' of ' + n + ')</span>';
    } else {
      zx = Math.max(X.lo, Math.min(X.hi, zx)); zy = Math.max(Y.lo, Math.min(Y.hi, zy));
      col = Math.round((zx - X.lo) / (X.hi - X.lo) * (G - 1)); row = Math.round((Y.hi - zy) / (Y.hi - Y.lo) * (G - 1));
      cell = row * G + col;
      gz = [X.lo + (X.hi - X.lo) * col / (G - 1), Y.hi - (Y.hi - Y.lo) * row / (G - 1)];
      text = geo === 'angles'
        ? '\u03c6 = ' + fmt(gz[0]) + ', \u03bb = ' + fmt(gz[1]) + ' rad <span class="muted">(lattice cell ' + row +
          ', ' + col + '; on the sphere of z<sub>' + D.dims.join('</sub>, z<sub>') + '</sub>)</span>'
        : 'z<sub>' + D.dims[0] + '</sub> = ' + fmt(gz[0]) + ', z<sub>' + D.dims[1] + '</sub> = ' + fmt(gz[1]) +
          ' <span class="muted">(lattice cell ' + row + ', ' + col + '; other dimensions 0)</span>';
    }
    drawPlane(gz);
    if (cell !== state.cell) {
      if (D.kind === 'image') { drawImageCell(row, col); } else { drawBars(cell); }
    }
    state.cell = cell; state.row = row; state.col = col; state.z = gz;
    out.setAttribute('data-cell', String(cell));
    readout.innerHTML = text;
  }
  function onMove(ev) {
    var r = plane.getBoundingClientRect();
    var px = (ev.clientX - r.left) * W / r.width, py = (ev.clientY - r.top) * H / r.height;
    if (geo === 'circle') { show(Math.atan2(H / 2 - py, px - W / 2), 1); return; }
    show(X.lo + (X.hi - X.lo) * px / W, Y.hi - (Y.hi - Y.lo) * py / H);
  }
  plane.addEventListener('pointermove', onMove);
  plane.addEventListener('pointerdown', onMove);
  var legend = document.getElementById('explorer-legend');
  if (D.labels && D.classes) {
    legend.innerHTML = D.classes.map(function (c, k) {
      return '<span><i style="background:' + D.colors[k % D.colors.length] + '"></i>' +
        String(c).replace(/[&<>"]/g, '') + '</span>';
    }).join('');
  }
  function start() { show(0, geo === 'circle' ? 1 : 0); }
  if (D.kind === 'image' && !(sprite.complete && sprite.naturalWidth > 0)) {
    sprite.addEventListener('load', start);
  } else { start(); }
})();
