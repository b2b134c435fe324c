"""``report.html``: one self-contained page per run directory (``bayesvae report RUN_DIR``).

The page holds the configuration, an honest evaluation of the test split (importance-sampled log-likelihood with K
samples, NLL in nats and bits/dim, the ELBO with its reconstruction and KL parts, active units), every picture of
:mod:`bayesvae.plots` that applies, and an interactive latent explorer.  Everything is inline: images are base64 PNG
data URIs, CSS and JavaScript are in the file, and a Content-Security-Policy forbids any fetch, so the page works
offline, from a mail attachment or an archive, forever.

The explorer needs no server: the decoder is evaluated once here on a dense grid over two latent dimensions and the
results are packed into one sprite-sheet PNG (images) or a JSON table (tabular data); the page draws the cell under
the pointer.

:func:`write_report` is robust by design: a section that fails shows its error text and the rest of the report is
still written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import plots
from .checkpoint import atomic_write_text
from .errors import CheckpointNotFoundError, ConfigError

__all__ = ["write_report", "render_report", "report_failures", "REPORT_NAME", "FAILED_REPORT_NAME"]

REPORT_NAME = "report.html"
FAILED_REPORT_NAME = "report.failed.html"
#: Explorer lattice: GRID x GRID decoded points over [-SPAN, SPAN]^2.
GRID, SPAN = 32, 3.0
_MAX_SPRITE_SIDE = 2048


# ------------------------------------------------------------------------------------------------- small pieces
def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(v) -> str:
    """A configuration value as short text."""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple, dict)):
        text = json.dumps(v)
        return text if len(text) <= 160 else text[:157] + "..."
    return str(v)


def _table(rows: list[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _error_line(err: BaseException) -> str:
    """One line saying what went wrong (no traceback)."""
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def _error_box(err: BaseException) -> str:
    return f'<div class="error"><b>This section failed:</b> {_esc(_error_line(err))}</div>'


def _json_script(element_id: str, data) -> str:
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


class _Sections:
    """Collects the page's sections; a failing builder yields an error box, never a lost report."""

    def __init__(self):
        self.items: list[tuple[str, str, str]] = []  # (anchor, title, html)
        self.failures: list[str] = []

    def add(self, anchor: str, title: str, build: Callable[[], str]) -> None:
        try:
            body = build()
        except Exception as err:  # noqa: BLE001 - the report must survive any one section
            body = _error_box(err)
            self.failures.append(title)
        if body:
            self.items.append((anchor, title, body))


def _figure_html(fig, caption: str, alt: str) -> str:
    uri = _png_uri(plots.to_png(fig))
    return (f'<figure><img src="{uri}" alt="{_esc(alt)}"><figcaption>{caption}</figcaption></figure>')


# --------------------------------------------------------------------------------------------------- evaluation
def _evaluate(ctx: plots.PlotContext, num_samples: int, max_examples: int, seed: int) -> dict:
    from .estimators import evaluate

    x_all = ctx.x
    x = x_all[:max_examples]
    prepared = ctx.prepared()
    levels = prepared.levels if prepared is not None else None
    t0 = time.perf_counter()
    from .estimators import model_device

    device = model_device(ctx.model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        result = evaluate(ctx.model, x, num_samples, levels=levels, batch_size=250)
    result["seconds"] = time.perf_counter() - t0
    result["split_size"] = int(x_all.shape[0])
    result["preparation"] = prepared.preparation if prepared is not None else "none"
    return result


def _metrics_html(ev: dict, ctx: plots.PlotContext) -> str:
    n, total, k = ev["num_examples"], ev["split_size"], ev["num_samples"]
    subset = (f"the first {n} of {total} test examples (at most {n} are evaluated, for speed)" if n < total
              else f"all {n} test examples")
    prep = {"binarize": "binarised once with a fixed seed (the dynamic-binarisation protocol)",
            "dequantize": f"uniformly dequantised from {ev.get('dequantization_levels')} levels (fixed seed); "
                          "bits/dim include the D·ln L term, so they are those of the discrete data",
            "none": "as loaded"}.get(ev["preparation"], ev["preparation"])
    rows = [
        ("test log-likelihood  log p(x)", f'<b class="headline">{ev["log_likelihood_nats"]:.3f} nats</b>'),
        ("NLL  −log p(x)", f'{ev["nll_nats"]:.3f} ± {ev["nll_nats_stderr"]:.3f} nats '
                           f'<span class="muted">(± standard error over examples)</span>'),
        ("NLL in bits/dim", f'{ev["nll_bits_per_dim"]:.4f} bits/dim '
                            f'<span class="muted">(D = {math.prod(ctx.data_shape)} dimensions)</span>'),
        ("ELBO", f'{ev["elbo_nats"]:.3f} nats <span class="muted">(one sample, closed-form KL)</span>'),
        ("  reconstruction  E[−ln q(x|z)]", f'{ev["reconstruction_nll_nats"]:.3f} nats'),
        ("  KL(p(z|x) ‖ q(z))", f'{ev["kl_nats"]:.3f} nats'),
        ("  gap  log p(x) − ELBO", f'{ev["log_likelihood_nats"] - ev["elbo_nats"]:.3f} nats '
                                   '<span class="muted">(the ELBO\'s slack as far as K samples reveal it)</span>'),
        ("active units", f'{ev["active_units"]} of {ev["latent_dim"]} '
                         '<span class="muted">(Var<sub>x</sub> E[z<sub>u</sub>|x] &gt; '
                         f'{plots.ACTIVE_THRESHOLD})</span>'),
    ]
    if "nll_standardized_nats" in ev:
        shift = ev["standardization_log_scale_sum_nats"]
        rows.append(("NLL of the standardised features", f'{ev["nll_standardized_nats"]:.3f} nats <span class="muted">'
                     "(every figure above is a density of the data in the file's units; the model works on "
                     f'standardised features, whose NLL is lower by Σ ln s<sub>j</sub> = {shift:.3f} nats)</span>'))
    note = (f'<p class="note">Log-likelihood by importance sampling with <b>K = {k}</b> samples from the posterior '
            f"(the IWAE bound, a lower bound on log p(x) that tightens as K grows), on {subset}; data {prep}. "
            f"Computed in {ev['seconds']:.1f} s.</p>")
    return _table(rows, "metrics") + note


# ----------------------------------------------------------------------------------------------------- explorer
def _explorer_html(ctx: plots.PlotContext, grid: int, max_points: int) -> str:
    d = ctx.latent_dim
    if d < 2:
        return ('<p class="note">The explorer needs at least two latent dimensions; this model has one. '
                "See the traversal picture instead.</p>")
    i, j = ctx.default_dims()
    kl = None
    try:
        kl = ctx.kl_per_dim()
    except Exception:  # noqa: BLE001 - without data the explorer still works, it just cannot say why these dims
        pass
    values = torch.linspace(-SPAN, SPAN, grid)
    z = torch.zeros(grid * grid, d)
    for r in range(grid):  # row r from the top: z_j decreasing; column c: z_i increasing
        z[r * grid:(r + 1) * grid, i] = values
        z[r * grid:(r + 1) * grid, j] = values[grid - 1 - r]
    decoded = ctx.decode(z)
    payload: dict = {"grid": grid, "span": SPAN, "dims": [i, j], "colors": list(plots.CLASS_COLORS)}
    if ctx.is_image:
        from PIL import Image

        from .grids import make_grid

        sheet = make_grid(decoded, ncol=grid, pad=0)
        img = Image.fromarray(sheet[..., 0] if sheet.shape[-1] == 1 else sheet)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        payload.update(kind="image", height=int(decoded.shape[2]), width=int(decoded.shape[3]))
        sprite = (f'<img id="explorer-sprite" class="sprite" src="{_png_uri(buf.getvalue())}" '
                  'alt="decoder sprite sheet">')
    else:
        vals = ctx.to_user_units(decoded)
        data_vals = ctx.to_user_units(ctx.x)
        lo, hi = np.percentile(data_vals, 1, axis=0), np.percentile(data_vals, 99, axis=0)
        lo, hi = np.minimum(lo, vals.min(0)), np.maximum(hi, vals.max(0))
        payload.update(kind="table", names=ctx.feature_names, values=_round_sig(vals).tolist(),
                       lo=_round_sig(lo).tolist(), hi=_round_sig(hi).tolist(),
                       mean=_round_sig(data_vals.mean(0)).tolist(),
                       p1=_round_sig(np.percentile(data_vals, 1, axis=0)).tolist(),
                       p99=_round_sig(np.percentile(data_vals, 99, axis=0)).tolist())
        sprite = ""
    try:
        x = ctx.x_display
        keep = np.sort(np.random.default_rng(0).choice(x.shape[0], min(max_points, x.shape[0]), replace=False))
        zz = ctx.encode(x[torch.as_tensor(keep)])[:, [i, j]].numpy()
        payload["points"] = np.round(zz, 3).tolist()
        labels = ctx.labels
        if labels is not None and len(labels) == x.shape[0]:
            lab = labels.numpy()[keep]
            classes = np.unique(lab)
            payload["labels"] = [int(np.searchsorted(classes, v)) for v in lab] if len(classes) <= 10 else None
            names = ctx.class_names
            payload["classes"] = [names[c] if names and 0 <= c < len(names) else str(c) for c in classes.tolist()]
    except Exception:  # noqa: BLE001 - the overlay is a bonus; the explorer works without it
        payload["points"] = []
    why = (f"the two with the largest KL (KL {kl[i]:.2f} and {kl[j]:.2f} nats)" if kl is not None
           else "the first two")
    output = ('<canvas id="explorer-output" width="280" height="280" aria-label="decoded image"></canvas>'
              if ctx.is_image else
              '<canvas id="explorer-output" width="520" height="300" aria-label="decoded feature values"></canvas>')
    what = ("the decoded image E[x|z]" if ctx.is_image else
            "the decoded feature values E[x|z] in the file's units (bar from the data mean; the grey track spans "
            "the data's 1st–99th percentile)")
    npoints = len(payload.get("points", []))
    coloured = ", coloured by label" if payload.get("labels") else ""
    return f"""
<p>Move the pointer over the plane: the panel on the right shows {what} at that point z. The plane spans
z<sub>{i}</sub>, z<sub>{j}</sub> ∈ [−{SPAN:g}, {SPAN:g}] ({why}); every other latent dimension is held at 0,
the prior mean. Dots are the posterior means of {npoints} encoded test examples{coloured}. The decoder was
evaluated on a {grid}×{grid} lattice when this report was written; the nearest lattice point is shown.</p>
<div class="explorer">
  <div><canvas id="explorer-plane" width="360" height="360" aria-label="latent plane"></canvas>
  <div id="explorer-legend" class="legend"></div></div>
  <div><div class="readout" id="explorer-readout">z<sub>{i}</sub> = 0, z<sub>{j}</sub> = 0</div>{output}</div>
</div>
{sprite}
{_json_script("explorer-data", payload)}
"""


def _round_sig(a: np.ndarray, sig: int = 5) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    out = np.array([float(f"{v:.{sig}g}") for v in a.ravel()]).reshape(a.shape)
    return out


_EXPLORER_JS = r"""
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
  var G = D.grid, S = D.span, W = plane.width, H = plane.height;
  var state = {cell: -1, row: -1, col: -1, z: [0, 0]};
  window.bayesvaeExplorer = state;
  function toPx(zx, zy) { return [(zx + S) / (2 * S) * W, (S - zy) / (2 * S) * H]; }
  function fmt(v) { return (v < 0 ? '\u2212' : '') + Math.abs(v).toFixed(2); }
  function drawPlane(mark) {
    pc.fillStyle = '#fafafa'; pc.fillRect(0, 0, W, H);
    pc.strokeStyle = '#e2e2e2'; pc.lineWidth = 1;
    for (var t = -Math.floor(S); t <= Math.floor(S); t++) {
      var p = toPx(t, t);
      pc.beginPath(); pc.moveTo(p[0], 0); pc.lineTo(p[0], H); pc.stroke();
      pc.beginPath(); pc.moveTo(0, p[1]); pc.lineTo(W, p[1]); pc.stroke();
    }
    pc.strokeStyle = '#b5b5b5';
    var o = toPx(0, 0);
    pc.beginPath(); pc.moveTo(o[0], 0); pc.lineTo(o[0], H); pc.moveTo(0, o[1]); pc.lineTo(W, o[1]); pc.stroke();
    var pts = D.points || [], labs = D.labels;
    pc.globalAlpha = 0.75;
    for (var k = 0; k < pts.length; k++) {
      var q = toPx(pts[k][0], pts[k][1]);
      if (q[0] < 0 || q[0] > W || q[1] < 0 || q[1] > H) { continue; }
      pc.fillStyle = labs ? D.colors[labs[k] % D.colors.length] : '#1f77b4';
      pc.beginPath(); pc.arc(q[0], q[1], 2.2, 0, 2 * Math.PI); pc.fill();
    }
    pc.globalAlpha = 1;
    pc.fillStyle = '#555'; pc.font = '11px sans-serif';
    for (var u = 1 - Math.ceil(S); u < Math.ceil(S); u++) {
      if (u === 0) { continue; }
      var tp = toPx(u, u);
      pc.fillText(String(u), tp[0] - 4, H - 4);
      pc.fillText(String(u), 3, tp[1] + 4);
    }
    pc.fillText('z' + D.dims[0] + ' \u2192', W - 42, o[1] - 4);
    pc.fillText('z' + D.dims[1] + ' \u2191', o[0] + 4, 12);
    if (mark) {
      var m = toPx(mark[0], mark[1]);
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
    zx = Math.max(-S, Math.min(S, zx)); zy = Math.max(-S, Math.min(S, zy));
    var col = Math.round((zx + S) / (2 * S) * (G - 1)), row = Math.round((S - zy) / (2 * S) * (G - 1));
    var cell = row * G + col;
    var gz = [-S + 2 * S * col / (G - 1), S - 2 * S * row / (G - 1)];
    drawPlane(gz);
    if (cell !== state.cell) {
      if (D.kind === 'image') { drawImageCell(row, col); } else { drawBars(cell); }
    }
    state.cell = cell; state.row = row; state.col = col; state.z = gz;
    out.setAttribute('data-cell', String(cell));
    readout.innerHTML = 'z<sub>' + D.dims[0] + '</sub> = ' + fmt(gz[0]) + ', z<sub>' + D.dims[1] +
      '</sub> = ' + fmt(gz[1]) + ' <span class="muted">(lattice cell ' + row + ', ' + col +
      '; other dimensions 0)</span>';
  }
  function onMove(ev) {
    var r = plane.getBoundingClientRect();
    var px = (ev.clientX - r.left) * W / r.width, py = (ev.clientY - r.top) * H / r.height;
    show(-S + 2 * S * px / W, S - 2 * S * py / H);
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
  function start() { show(0, 0); }
  if (D.kind === 'image' && !(sprite.complete && sprite.naturalWidth > 0)) {
    sprite.addEventListener('load', start);
  } else { start(); }
})();
"""

_CSS = """
:root { --fg: #1d1d1f; --muted: #6b6b6b; --line: #e3e3e3; --accent: #1f77b4; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif;
       color: var(--fg); background: #f4f5f7; }
header { background: #1f2a37; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d1db; font-size: 13px; }
nav { padding: 8px 28px; background: #fff; border-bottom: 1px solid var(--line); font-size: 13px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
main { max-width: 1120px; margin: 0 auto; padding: 18px 20px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 20px 18px;
          margin: 0 0 18px; }
h2 { font-size: 18px; margin: 4px 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
figure { margin: 6px 0 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption, .note, .muted { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; font-size: 14px; }
table th { text-align: left; font-weight: 600; padding: 4px 18px 4px 0; vertical-align: top; white-space: pre; }
table td { padding: 4px 0; font-variant-numeric: tabular-nums; word-break: break-word; }
table tr + tr th, table tr + tr td { border-top: 1px solid #f0f0f0; }
.headline { font-size: 17px; }
.summary { display: flex; flex-wrap: wrap; gap: 12px; }
.summary div { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.summary b { display: block; font-size: 18px; }
.summary span { color: var(--muted); font-size: 12px; }
.cols { display: flex; flex-wrap: wrap; gap: 28px; }
.error { background: #fff1f0; border: 1px solid #f3b8b3; color: #8a1c12; padding: 8px 12px; border-radius: 6px; }
.error pre { white-space: pre-wrap; font-size: 12px; }
.explorer { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
#explorer-plane { border: 1px solid #cfcfcf; cursor: crosshair; touch-action: none; width: 360px; height: 360px; }
#explorer-output { border: 1px solid #cfcfcf; image-rendering: pixelated; image-rendering: crisp-edges; }
.readout { font-variant-numeric: tabular-nums; margin-bottom: 6px; min-height: 24px; }
.legend { font-size: 12px; margin-top: 6px; max-width: 360px; }
.legend span { margin-right: 10px; white-space: nowrap; }
.legend i { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 3px; }
.sprite { display: none; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding-bottom: 24px; }
"""

# Nothing may be fetched: images are data URIs, script and style are inline.
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "connect-src 'none'; font-src 'none'; base-uri 'none'; form-action 'none'")

_CAPTIONS = {
    "curves": ("Learning curves", "The total loss (bold) is the one indicator of progress: L = reconstruction + KL "
               "(eq. 24) for the ELBO objective, the negative IWAE bound for the IWAE objective (its panel title says "
               "which; the two ELBO terms then do not add up to it). Solid: training (averaged over the epoch), "
               "dashed: validation."),
    "latent": ("Latent space", "Posterior means E[z|x] of the test split, coloured by label."),
    "manifold": ("Manifold", "Decoded means E[x|z] over a 15×15 lattice of standard-normal quantiles "
                 "(0.05 to 0.95) in the two latent dimensions with the largest KL; other dimensions at 0."),
    "samples": ("Samples", "E[x|z] for z drawn from the prior q(z) = N(0, I) (decoder means, not noisy draws)."),
    "reconstructions": ("Reconstructions", "Test inputs (left) and E[x|z] at z = E[z|x] (right), same positions."),
    "interpolation": ("Interpolation", "Each row: two test examples (ends) and the decoder means along the straight "
                      "line between their posterior means."),
    "traversals": ("Latent traversals", "Each row moves one latent dimension from −3 to 3 with the others at 0; "
                   "dimensions with the largest KL first (at most 10)."),
    "kl": ("KL per dimension", "Top: mean KL(p(z_u|x) ‖ q(z_u)) per latent dimension on the test split (the terms "
           "sum to the KL of the ELBO). Bottom: the active-units statistic Var_x E[z_u|x]; dimensions above the "
           "dashed threshold are active."),
    "histograms": ("Feature distributions", "Per-feature histograms of the test data and of model draws "
                   "x ~ q(x|z), z ~ q(z), in the units of the data file."),
}


# ------------------------------------------------------------------------------------------------------- report
def render_report(run_dir: str | Path, *, num_samples: int = 1000, max_examples: int = 2000,
                  checkpoint: str = "best", seed: int = 0, explorer_grid: int = GRID,
                  device: str | torch.device = "cpu", data: str | None = None, data_dir: str | None = None,
                  say=None) -> str:
    """The report's HTML text (see :func:`write_report`)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples <= 0:
        raise ConfigError(f"max_examples must be a positive integer, got {max_examples!r}")
    from .runs import load_run

    run_dir = Path(run_dir)
    started = time.perf_counter()
    where = dict(data=data, data_dir=data_dir, say=say, device=device)
    try:
        run = load_run(run_dir, checkpoint, **where)
    except CheckpointNotFoundError:
        if checkpoint != "best":
            raise
        run = load_run(run_dir, "last", **where)  # a run without validation data has no "best" pointer
        checkpoint = "last (no best checkpoint)"
    ctx = plots.PlotContext(run.model, run=run, run_dir=run_dir)
    state = run.state
    desc = (state.get("data") or {}).get("description") or {}
    mc = state.get("model_config") or {}
    tc = state.get("train_config") or {}
    sections = _Sections()
    evaluation: dict = {}
    metrics_records: list[dict] = []
    try:
        metrics_records = plots._read_metrics(ctx)
    except Exception:  # noqa: BLE001 - shown in the curves section
        pass

    def metrics_section() -> str:
        evaluation.update(_evaluate(ctx, num_samples, max_examples, seed))
        return _metrics_html(evaluation, ctx)

    sections.add("metrics", "Test metrics", metrics_section)

    def plot_section(kind: str) -> Callable[[], str]:
        def build() -> str:
            fig = plots.KINDS[kind](ctx)
            title, caption = _CAPTIONS[kind]
            return _figure_html(fig, _esc(caption), title)
        return build

    kinds = plots.applicable_kinds(ctx)
    order = ["curves", "latent", "explorer", "manifold", "samples", "reconstructions", "interpolation",
             "traversals", "kl", "histograms"]
    for kind in order:
        if kind == "explorer":
            sections.add("explorer", "Latent explorer",
                         lambda: _explorer_html(ctx, explorer_grid, 2000))
        elif kind in kinds:
            sections.add(kind, _CAPTIONS[kind][0], plot_section(kind))
    if not ctx.is_image:
        sections.add("images", "Image pictures", lambda: (
            '<p class="note">Manifold, samples, reconstructions, interpolation and traversal pictures need image '
            f"data; this run's data are vectors of {math.prod(ctx.data_shape)} features, so the report shows "
            "feature distributions and the explorer shows decoded feature values instead.</p>"))

    def config_section() -> str:
        data_rows = [(k, _esc(_fmt(v))) for k, v in desc.items()]
        data_state = state.get("data") or {}
        data_rows += [("source", _esc(data_state.get("source"))),
                      ("preparation", _esc(data_state.get("preparation"))),
                      ("fingerprint", f'<span class="muted">{_esc(data_state.get("fingerprint"))}</span>')]
        if data_state.get("standardization") is not None:
            data_rows.append(("standardisation", "per feature, mean and standard deviation of the training split"))
        ckpt_rows = [("checkpoint", _esc(checkpoint)), ("path", _esc(run.checkpoint))]
        return ('<div class="cols"><div><h3>Model</h3>' + _table([(k, _esc(_fmt(v))) for k, v in mc.items()])
                + '</div><div><h3>Training</h3>' + _table([(k, _esc(_fmt(v))) for k, v in tc.items()])
                + '</div><div><h3>Data</h3>' + _table(data_rows) + '<h3>Checkpoint</h3>' + _table(ckpt_rows)
                + '</div></div>')

    sections.add("config", "Configuration", config_section)

    try:
        summary = _summary_html(evaluation, metrics_records, desc, mc, num_samples)
    except Exception as err:  # noqa: BLE001
        summary = _error_box(err)
        sections.failures.append("Summary")
    nav = "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t, _ in sections.items)
    body = "".join(f'<section id="{a}"><h2>{_esc(t)}</h2>{h}</section>' for a, t, h in sections.items)
    notes_html = "".join(f'<div class="error">{_esc(n)}</div>' for n in run.notes)
    failed = (f'<div class="error">{len(sections.failures)} section(s) failed: {_esc(", ".join(sections.failures))}'
              "</div>") if sections.failures else ""
    from . import __version__
    title = f"bayesvae report: {run_dir.resolve().name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="bayesvae-failed-sections" content="{len(sections.failures)}">
<title>{_esc(title)}</title>
<style>{_CSS}</style></head>
<body>
<header><h1>{_esc(title)}</h1>
<p>{_esc(run_dir.resolve())} · written {_esc(time.strftime('%Y-%m-%d %H:%M:%S'))} · bayesvae {_esc(__version__)} ·
torch {_esc(torch.__version__)} · Python {_esc(platform.python_version())} ·
built in {time.perf_counter() - started:.1f} s</p></header>
<nav>{nav}</nav>
<main>
{failed}{notes_html}
<section id="summary"><h2>Summary</h2>{summary}</section>
{body}
</main>
<footer>Self-contained report: every image is embedded and nothing is fetched from the network.</footer>
<script>{_EXPLORER_JS}</script>
</body></html>
"""


def _summary_html(ev: dict, records: list[dict], desc: dict, mc: dict, num_samples: int) -> str:
    cards = []
    if ev:
        cards.append((f'{ev["nll_nats"]:.2f} nats', f"test NLL (K = {num_samples})"))
        cards.append((f'{ev["nll_bits_per_dim"]:.3f}', "bits/dim"))
        cards.append((f'{ev["elbo_nats"]:.2f} nats', "test ELBO"))
        cards.append((f'{ev["active_units"]} / {ev["latent_dim"]}', "active units"))
    if records:
        valid = [r["valid_loss"] for r in records if isinstance(r.get("valid_loss"), (int, float))]
        cards.append((str(records[-1].get("epoch", len(records))), "epochs trained"))
        if valid:
            cards.append((f"{min(valid):.2f} nats", "best validation loss"))
    shape = desc.get("event_shape", mc.get("data_shape"))
    splits = desc.get("splits") or {}
    line = (f'<p>{_esc(desc.get("name", "data"))} ({_esc(desc.get("kind", ""))}, shape {_esc(shape)}, '
            f'train/valid/test {_esc(splits.get("train"))}/{_esc(splits.get("valid"))}/{_esc(splits.get("test"))}); '
            f'likelihood {_esc(mc.get("likelihood"))}, latent dimension {_esc(mc.get("latent_dim"))}, '
            f'{_esc(mc.get("architecture"))} {_esc(mc.get("hidden"))}.</p>')
    return line + '<div class="summary">' + "".join(f"<div><b>{_esc(v)}</b><span>{_esc(k)}</span></div>"
                                                    for v, k in cards) + "</div>"


def report_failures(path: str | Path) -> list[str] | None:
    """The titles of the sections that failed in the report at ``path`` ([] when none did; None when there is no
    readable bayesvae report there)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return _failures_in(text)


def _failures_in(text: str) -> list[str] | None:
    m = re.search(r'<meta name="bayesvae-failed-sections" content="(\d+)">', text[:4096])
    listed = re.search(r'<div class="error">(\d+) section\(s\) failed: ([^<]*)</div>', text)
    if listed:
        return html.unescape(listed.group(2)).split(", ")
    if m or "<title>bayesvae report" in text[:4096]:
        return []
    return None


def write_report(run_dir: str | Path, *, num_samples: int = 1000, max_examples: int = 2000,
                 checkpoint: str = "best", seed: int = 0, device: str | torch.device = "cpu",
                 data: str | None = None, data_dir: str | None = None, say=None) -> Path:
    """Write ``RUN_DIR/report.html`` (atomically, replacing an older report) and return its path.

    Args:
        num_samples: K importance samples for the test log-likelihood (stated on the page).
        max_examples: evaluate at most this many test examples (stated on the page).
        checkpoint: ``best`` (default), ``last`` or a step directory.
        seed: seed of the evaluation's sampling (the global random state is left as it was).
        device: where the model computes (the evaluation and every plot).
        data, data_dir: where the run's data file / MNIST directory are now, if they moved (fingerprint checked).
        say: called with warnings (e.g. data whose fingerprint differs); they are also shown on the page.

    A section that fails shows its error in one line and the rest is still written; only an unloadable run
    raises.  The page records how many sections failed (:func:`report_failures` reads it).  A report with more
    failed sections than the existing ``report.html`` never replaces it: it goes to ``report.failed.html``
    (the returned path) instead.
    """
    path = Path(run_dir) / REPORT_NAME
    text = render_report(run_dir, num_samples=num_samples, max_examples=max_examples, checkpoint=checkpoint,
                         seed=seed, device=device, data=data, data_dir=data_dir, say=say)
    failed = _failures_in(text) or []
    previous = report_failures(path) if path.exists() else None
    if failed and previous is not None and len(previous) < len(failed):
        path = path.with_name(FAILED_REPORT_NAME)
    atomic_write_text(path, text)
    return path
