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


def _sphere_lattice(ctx: plots.PlotContext, grid: int) -> tuple[torch.Tensor, dict]:
    """The explorer's lattice for a latent on the sphere: G*G angles θ ∈ [-π, π] around the circle (d = 2, read
    row by row), or a G x G lattice of azimuth φ ∈ [-π, π] and elevation λ ∈ [-π/2, π/2] on the 2-sphere of three
    latent dimensions (others 0). Returns (z, payload fields)."""
    dims = plots.sphere_dims(ctx)
    if len(dims) == 2:
        n = grid * grid
        theta = -math.pi + 2 * math.pi * torch.arange(n, dtype=torch.float64) / (n - 1)
        return plots.sphere_point(theta).float(), {"geometry": "circle", "dims": list(dims)}
    phi = torch.linspace(-math.pi, math.pi, grid, dtype=torch.float64)
    lam = torch.linspace(math.pi / 2, -math.pi / 2, grid, dtype=torch.float64)  # row r from the top: λ decreasing
    z = torch.zeros(grid * grid, ctx.latent_dim, dtype=torch.float64)
    z[:, list(dims)] = plots.sphere_point(phi.repeat(grid), lam.repeat_interleave(grid))
    fields = {"geometry": "angles", "dims": list(dims),
              "x": {"lo": -math.pi, "hi": math.pi, "label": f"z{dims[0]}, z{dims[1]}"},
              "y": {"lo": -math.pi / 2, "hi": math.pi / 2, "label": f"z{dims[2]}"}}
    return z.float(), fields


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
#: The fewest test examples a time-bounded report evaluates.
MIN_EXAMPLES = 50
#: A report (and ``evaluate``) whose test log-likelihood will take longer than this (seconds) says so first.
ANNOUNCE_AFTER_S = 60.0


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _evaluate(ctx: plots.PlotContext, num_samples: int, max_examples: int, seed: int,
              max_seconds: float | None = None, say=None) -> dict:
    from .estimators import evaluate, seconds_per_example

    x_all = ctx.x
    x = x_all[:max_examples]
    if max_seconds is None and say is not None and x.shape[0] > MIN_EXAMPLES:  # say how long, when long
        total = seconds_per_example(ctx.model, x, num_samples) * x.shape[0]
        if total > ANNOUNCE_AFTER_S:
            say(f"report: the test log-likelihood of {x.shape[0]} {ctx.split} examples with K = {num_samples} takes "
                f"about {duration_text(total)} here; --samples K and --max-examples N make it shorter")
    if max_seconds is not None and x.shape[0] > MIN_EXAMPLES:  # as many as the time allows, at least MIN_EXAMPLES
        fit = int(max_seconds / max(seconds_per_example(ctx.model, x, num_samples), 1e-9))
        if fit < x.shape[0]:
            x = x[: max(MIN_EXAMPLES, fit)]
            if say is not None:
                why = (f"what fits in about {duration_text(max_seconds)} here" if fit >= MIN_EXAMPLES else
                       f"the fewest it evaluates; about {duration_text(x.shape[0] * max_seconds / max(fit, 1))} "
                       "here")
                say(f"report: the test log-likelihood on the first {x.shape[0]} of {x_all.shape[0]} {ctx.split} "
                    f"examples with K = {num_samples} ({why}); `bayesvae report RUN_DIR --max-examples N` "
                    "evaluates more")
    prepared = ctx.prepared()
    levels = prepared.levels if prepared is not None else None
    t0 = time.perf_counter()
    from .estimators import model_device

    device = model_device(ctx.model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        result = evaluate(ctx.model, x, num_samples, levels=levels, batch_size=250)
    assert result is not None  # one process (evaluate returns None on the other ranks of a distributed run)
    result["seconds"] = time.perf_counter() - t0
    result["split_size"] = int(x_all.shape[0])
    result["preparation"] = prepared.preparation if prepared is not None else "none"
    return result


def _metrics_html(ev: dict, ctx: plots.PlotContext) -> str:
    n, total, k = ev["num_examples"], ev["split_size"], ev["num_samples"]
    subset = (f"the first {n} of {total} {ctx.split} examples (at most {n} are evaluated, for speed)" if n < total
              else f"all {n} {ctx.split} examples")
    prep = {"binarize": "binarised once with a fixed seed (the dynamic-binarisation protocol)",
            "dequantize": f"uniformly dequantised from {ev.get('dequantization_levels')} levels (fixed seed); "
                          "bits/dim include the D·ln L term, so they are those of the discrete data",
            "none": "as loaded"}.get(ev["preparation"], ev["preparation"])
    rows = [
        ("test log-likelihood  log p(x)", f'<b class="headline">{ev["log_likelihood_nats"]:.3f} nats</b>'),
        ("NLL  −log p(x)", f'{ev["nll_nats"]:.3f} ± {ev["nll_nats_stderr"]:.3f} nats '
                           f'<span class="muted">(± standard error over examples)</span>'),
        ("perplexity per token", f'{ev["perplexity_per_token"]:.2f} <span class="muted">(exp of the total NLL per '
                                 f'token, over {ev["tokens"]} tokens: {_esc(ev["perplexity_tokens"])}; the NLL '
                                 'above is per sentence)</span>')
        if "perplexity_per_token" in ev else
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
    if ev.get("mutual_information_nats") is not None:
        rows.append(("mutual information  I(x; z)", f'{ev["mutual_information_nats"]:.3f} nats <span class="muted">'
                     f'(minibatch estimate under the aggregate posterior, N = {ev["mutual_information_batch_size"]}'
                     f' examples per batch; never above log N = {ev["mutual_information_max_nats"]:.2f}, biased low '
                     'near it)</span>'))
    if ev.get("kl_per_dimension_nats"):
        per_dim = " ".join(f"{v:.2f}" for v in ev["kl_per_dimension_nats"][:64])
        rows.append(("KL per dimension", f'<span class="muted">{per_dim} nats</span>'))
    bound = (ctx.run.state.get("kl_bound") if ctx.run is not None else None) or None
    if bound:
        note = ("" if bound["kind"] == "constant" else f'; it holds for the mean KL of a training batch, not for '
                f'other data: the KL of the evaluated split is {ev["kl_nats"]:.3f} nats')
        rows.append(("KL floor of the posterior", f'{bound["nats"]:.3f} nats <span class="muted">({_esc(bound["kind"])}'
                     f' of {_esc(bound["form"])}{note})</span>'))
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
    if ctx.is_sphere:
        return _sphere_explorer_html(ctx, grid, max_points)
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
    payload.update(_decoded_payload(ctx, decoded))
    sprite = payload.pop("sprite")
    _label_points(ctx, payload, max_points, lambda z: z[:, [i, j]])
    why = (f"the two with the largest KL (KL {kl[i]:.2f} and {kl[j]:.2f} nats)" if kl is not None
           else "the first two")
    output = _output_canvas(ctx)
    what = _what(ctx)
    npoints = len(payload.get("points", []))
    coloured = ", coloured by label" if payload.get("labels") else ""
    return f"""
<p>Move the pointer over the plane: the panel on the right shows {what} at that point z. The plane spans
z<sub>{i}</sub>, z<sub>{j}</sub> ∈ [−{SPAN:g}, {SPAN:g}] ({why}); every other latent dimension is held at 0,
the prior mean. Dots are the posterior means of {npoints} encoded test examples{coloured}. The decoder was
evaluated on a {grid}×{grid} lattice when this report was written; the nearest lattice point is shown.</p>
{_explorer_body(payload, sprite, output, f"z<sub>{i}</sub> = 0, z<sub>{j}</sub> = 0")}
"""


def _sphere_explorer_html(ctx: plots.PlotContext, grid: int, max_points: int) -> str:
    z, fields = _sphere_lattice(ctx, grid)
    payload: dict = {"grid": grid, "colors": list(plots.CLASS_COLORS), **fields}
    payload.update(_decoded_payload(ctx, ctx.decode(z)))
    sprite = payload.pop("sprite")
    dims = fields["dims"]
    if fields["geometry"] == "circle":
        def to_points(m):
            rng = np.random.default_rng(0)
            theta = torch.atan2(m[:, dims[1]], m[:, dims[0]]).numpy()
            return np.stack([theta, 1.0 + rng.uniform(-0.04, 0.04, len(theta))], 1)
        how = (f"Move the pointer around the circle: the angle θ of the pointer from the centre picks the point "
               f"z = (cos θ, sin θ) of the latent circle S¹, and the panel on the right shows {_what(ctx)} there. "
               f"The decoder was evaluated at {grid * grid} angles when this report was written; the nearest is "
               "shown.")
    else:
        def to_points(m):
            v = m[:, dims].double().numpy()
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            return np.stack([np.arctan2(v[:, 1], v[:, 0]), np.arcsin(np.clip(v[:, 2], -1, 1))], 1)
        others = "" if ctx.latent_dim == 3 else " (the three with the largest spread of μ(x); the others 0)"
        how = (f"The plane is a map of the sphere S² of z<sub>{dims[0]}</sub>, z<sub>{dims[1]}</sub>, "
               f"z<sub>{dims[2]}</sub>{others}: azimuth φ ∈ [−π, π] across, elevation λ ∈ [−π/2, π/2] up, "
               "z = (cos λ cos φ, cos λ sin φ, sin λ). Move the pointer: the panel on the right shows "
               f"{_what(ctx)} at that z. The decoder was evaluated on a {grid}×{grid} lattice of the two angles "
               "when this report was written; the nearest lattice point is shown.")
    _label_points(ctx, payload, max_points, to_points)
    npoints = len(payload.get("points", []))
    coloured = ", coloured by label" if payload.get("labels") else ""
    return (f"<p>{how} Dots are the mean directions μ(x) of {npoints} encoded test examples{coloured}. The normal-"
            "quantile plane of a Gaussian latent means nothing here, so the explorer walks the angles.</p>"
            + _explorer_body(payload, sprite, _output_canvas(ctx), "θ = 0"))


def _what(ctx: plots.PlotContext) -> str:
    return ("the decoded image E[x|z]" if ctx.is_image else
            "the decoded feature values E[x|z] in the file's units (bar from the data mean; the grey track spans "
            "the data's 1st–99th percentile)")


def _output_canvas(ctx: plots.PlotContext) -> str:
    return ('<canvas id="explorer-output" width="280" height="280" aria-label="decoded image"></canvas>'
            if ctx.is_image else
            '<canvas id="explorer-output" width="520" height="300" aria-label="decoded feature values"></canvas>')


def _explorer_body(payload: dict, sprite: str, output: str, readout: str) -> str:
    return f"""<div class="explorer">
  <div><canvas id="explorer-plane" width="360" height="360" aria-label="latent plane"></canvas>
  <div id="explorer-legend" class="legend"></div></div>
  <div><div class="readout" id="explorer-readout">{readout}</div>{output}</div>
</div>
{sprite}
{_json_script("explorer-data", payload)}
"""


def _label_points(ctx: plots.PlotContext, payload: dict, max_points: int, project) -> None:
    """Encoded test examples (projected by ``project`` to the explorer's two coordinates) and their labels."""
    try:
        x = ctx.x_display
        keep = np.sort(np.random.default_rng(0).choice(x.shape[0], min(max_points, x.shape[0]), replace=False))
        zz = np.asarray(project(ctx.encode(x[torch.as_tensor(keep)])))
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


def _decoded_payload(ctx: plots.PlotContext, decoded: torch.Tensor) -> dict:
    """The decoded lattice: a sprite-sheet PNG for images (returned under "sprite" as an <img>), a table of
    feature values otherwise."""
    grid = int(round(math.sqrt(decoded.shape[0])))
    payload: dict = {}
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
    payload["sprite"] = sprite
    return payload


def _round_sig(a: np.ndarray, sig: int = 5) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    out = np.array([float(f"{v:.{sig}g}") for v in a.ravel()]).reshape(a.shape)
    return out


def _asset(name: str) -> str:
    """A file of ``bayesvae/assets`` (the explorer's JavaScript, the page's CSS), read at render time and inlined."""
    from importlib import resources

    text = resources.files("bayesvae").joinpath("assets").joinpath(name).read_text(encoding="utf-8")
    return text.replace("</", "<\\/")  # nothing in an inlined asset may close its <script>/<style> element




# Nothing may be fetched: images are data URIs, script and style are inline.
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "connect-src 'none'; font-src 'none'; base-uri 'none'; form-action 'none'")

_CAPTIONS = {
    "curves": ("Learning curves", "The total loss (bold) is the one indicator of progress: L = reconstruction + KL "
               "(eq. 24) for the ELBO objective, the negative IWAE bound for the IWAE objective (its panel title says "
               "which; the two ELBO terms then do not add up to it). Solid: training (averaged over the epoch), "
               "dashed: validation."),
    "latent": ("Latent space", "Posterior means E[z|x] of the test split, coloured by label where the data have "
               "labels."),
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


_CAPTIONS["sphere"] = ("Latent sphere", "d = 2: the mean directions μ(x) of the test split at their angle on the "
                       "latent circle, coloured by label, and the decoder means E[x|z] at angles around the circle. "
                       "d ≥ 3: μ(x) as azimuth and elevation, and E[x|z] over a lattice of the two angles.")
#: Captions that change when z lives on the unit sphere (vmf posterior, uniform prior).
_SPHERE_CAPTIONS = {
    "latent": ("Latent space", "Mean directions μ(x) of the test split (points on the unit sphere), coloured by "
               "label where the data have labels."),
    "samples": ("Samples", "E[x|z] for z drawn from the prior q(z), the uniform distribution on the unit sphere "
                "(decoder means, not noisy draws)."),
    "reconstructions": ("Reconstructions", "Test inputs (left) and E[x|z] at the mean direction z = μ(x) (right)."),
    "interpolation": ("Interpolation", "Each row: two test examples (ends) and the decoder means along the great "
                      "circle between their mean directions (slerp: every point stays on the sphere)."),
}


# ------------------------------------------------------------------------------------------------------- report
def render_report(run_dir: str | Path, *, num_samples: int = 1000, max_examples: int = 2000,
                  checkpoint: str = "best", seed: int = 0, explorer_grid: int = GRID,
                  device: str | torch.device = "cpu", data: str | None = None, data_dir: str | None = None,
                  say=None, max_seconds: float | None = None) -> str:
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
    state = run.state
    desc = (state.get("data") or {}).get("description") or {}
    sizes = desc.get("splits") or {}
    split = "test"
    if sizes.get("test") == 0:  # --test-fraction 0: the validation split stands in, and the page says so
        split = "valid" if sizes.get("valid") else "train"
        note = (f"this run has no test split (--test-fraction 0): the report's figures and pictures are of the "
                f"{'validation' if split == 'valid' else 'training'} split, which "
                f"{'also chose the checkpoint' if split == 'valid' else 'the model was trained on'}, so they are "
                "optimistic; hold out a test split for an honest figure")
        run.notes.append(note)
        if say is not None:
            say(f"note: {note}")
    ctx = plots.PlotContext(run.model, run=run, run_dir=run_dir, split=split)
    mc = state.get("model_config") or {}
    tc = state.get("train_config") or {}
    sections = _Sections()
    evaluation: dict = {}
    metrics_records: list[dict] = []
    try:
        metrics_records = plots._read_metrics(ctx)
    except Exception:  # noqa: BLE001 - shown in the curves section
        pass

    is_text = run.model_config.architecture == "rnn"

    def metrics_section() -> str:
        evaluation.update(_evaluate(ctx, num_samples, max_examples, seed, max_seconds, say))
        if is_text:  # per sentence and per token, not per dimension: a sentence's length is not a dimension
            from .text.metrics import text_figures

            evaluation.update(text_figures(ctx.model, ctx.x[: evaluation["num_examples"]], evaluation))
        return _metrics_html(evaluation, ctx)

    sections.add("metrics", "Test metrics" if split == "test" else f"Metrics of the {split} split (no test split)",
                 metrics_section)

    def plot_section(kind: str) -> Callable[[], str]:
        def build() -> str:
            fig = plots.KINDS[kind](ctx)
            title, caption = _SPHERE_CAPTIONS.get(kind, _CAPTIONS[kind]) if ctx.is_sphere else _CAPTIONS[kind]
            return _figure_html(fig, _esc(caption), title)
        return build

    kinds = plots.applicable_kinds(ctx)
    order = ["curves", "latent", "sphere", "explorer", "manifold", "samples", "reconstructions", "interpolation",
             "traversals", "kl", "histograms"]
    for kind in order:
        if kind == "explorer":
            if not is_text:  # text: decoded sentences in the Sentences section instead
                sections.add("explorer", "Latent explorer",
                             lambda: _explorer_html(ctx, explorer_grid, 2000))
        elif kind in kinds and not (is_text and kind == "interpolation"):  # text: in the Sentences section
            sections.add(kind, _CAPTIONS[kind][0], plot_section(kind))
    if is_text:
        from .text.report import sentences_html

        sections.add("sentences", "Sentences", lambda: sentences_html(run, ctx.x, evaluation, seed))
    elif not ctx.is_image:
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
        unused = {"rnn": ("activation", "conv_channels"),
                  "mlp": ("conv_channels",)}.get(str(mc.get("architecture")), ())
        model_rows = [(k, _esc(_fmt(v))) for k, v in mc.items() if k not in unused]  # settings this model uses
        return ('<div class="cols"><div><h3>Model</h3>' + _table(model_rows)
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
<style>{_asset('report.css')}</style></head>
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
<script>{_asset('explorer.js')}</script>
</body></html>
"""


def _summary_html(ev: dict, records: list[dict], desc: dict, mc: dict, num_samples: int) -> str:
    cards = []
    if ev:
        cards.append((f'{ev["nll_nats"]:.2f} nats', f"test NLL (K = {num_samples})"))
        if "perplexity_per_token" in ev:
            cards.append((f'{ev["perplexity_per_token"]:.1f}', "perplexity per token"))
        else:
            cards.append((f'{ev["nll_bits_per_dim"]:.3f}', "bits/dim"))
        cards.append((f'{ev["elbo_nats"]:.2f} nats', "test ELBO"))
        cards.append((f'{ev["active_units"]} / {ev["latent_dim"]}', "active units"))
        if ev.get("mutual_information_nats") is not None:
            cards.append((f'{ev["mutual_information_nats"]:.2f} nats', "I(x; z), minibatch estimate"))
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
                 data: str | None = None, data_dir: str | None = None, say=None,
                 max_seconds: float | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (atomically, replacing an older report) and return its path.

    Args:
        num_samples: K importance samples for the test log-likelihood (stated on the page).
        max_examples: evaluate at most this many test examples (stated on the page).
        checkpoint: ``best`` (default), ``last`` or a step directory.
        seed: seed of the evaluation's sampling (the global random state is left as it was).
        device: where the model computes (the evaluation and every plot).
        data, data_dir: where the run's data file / MNIST directory are now, if they moved (fingerprint checked).
        say: called with warnings (e.g. data whose fingerprint differs); they are also shown on the page.
        max_seconds: evaluate only as many of the ``max_examples`` as fit in about this time (at least
            MIN_EXAMPLES; timed on a few examples first, the page says how many were evaluated).

    A section that fails shows its error in one line and the rest is still written; only an unloadable run
    raises.  The page records how many sections failed (:func:`report_failures` reads it).  A report with more
    failed sections than the existing ``report.html`` never replaces it: it goes to ``report.failed.html``
    (the returned path) instead.
    """
    path = Path(run_dir) / REPORT_NAME
    text = render_report(run_dir, num_samples=num_samples, max_examples=max_examples, checkpoint=checkpoint,
                         seed=seed, device=device, data=data, data_dir=data_dir, say=say, max_seconds=max_seconds)
    failed = _failures_in(text) or []
    previous = report_failures(path) if path.exists() else None
    if failed and previous is not None and len(previous) < len(failed):
        path = path.with_name(FAILED_REPORT_NAME)
    atomic_write_text(path, text)
    return path
