"""Pictures of a trained VAE: each kind is one function returning a matplotlib ``Figure``.

    from bayesvae import plots
    fig = plots.manifold("runs/digits")            # a run directory, a LoadedRun, or a VAE with data=...
    fig.savefig("manifold.png")                      # or plots.to_png(fig) for the bytes

Kinds (``KINDS``): ``latent`` (posterior means of the test split coloured by label; PCA beyond 2 dimensions),
``manifold`` (E[x|z] over a lattice of standard-normal quantiles in two latent dimensions, the seed's picture),
``samples`` (decoded prior draws), ``reconstructions``, ``interpolation`` (linear in z between encoded test
examples), ``traversals`` (one latent dimension at a time, sorted by KL), ``kl`` (KL per dimension and active units),
``curves`` (learning curves from ``metrics.jsonl``), for tabular data ``histograms`` (data vs model draws
per feature, in the user's units) and, for a latent on the unit sphere (vmf), ``sphere`` (d = 2: the latent circle
coloured by label and the decoded images along the angle; d ≥ 3: azimuth and elevation). On a sphere ``manifold``,
``traversals`` and ``kl`` are never drawn (they assume z in R^d) and ``interpolation`` follows great circles.
Image kinds refuse tabular runs and ``histograms`` refuses image runs with a
:class:`~bayesvae.errors.DataValidationError` that lists the kinds that apply.

matplotlib is imported lazily and only through its object-oriented API with the Agg canvas: no pyplot state, no
window, safe in servers and tests.  Every data-dependent picture is drawn from a fixed seed, so it is reproducible.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataValidationError
from .grids import make_grid

__all__ = ["KINDS", "IMAGE_KINDS", "TABULAR_KINDS", "PlotContext", "context", "applicable_kinds", "plot", "to_png",
           "latent", "manifold", "samples", "reconstructions", "interpolation", "traversals", "kl", "curves",
           "histograms", "sphere", "sphere_point", "sphere_dims", "EUCLIDEAN_KINDS", "ACTIVE_THRESHOLD", "CLASS_COLORS"]

#: Var_x(E[z_u|x]) above which latent dimension u counts as active (Burda et al. 2016).
ACTIVE_THRESHOLD = 0.01
#: Label colours (matplotlib's tab10), shared with the report's explorer.
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")
_ONE_COLOR = "#1f77b4"


# ------------------------------------------------------------------------------------------------------ sources
class PlotContext:
    """A model plus the data split the pictures use, loaded once and shared by every kind (the report draws all
    of them from one context).  Build it with :func:`context`."""

    def __init__(self, model, *, data: torch.Tensor | None = None, labels=None, class_names=None, run=None,
                 run_dir: Path | None = None, split: str = "test", dataset=None):
        self.model = model
        self.run = run
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.split = split
        self._x = None if data is None else torch.as_tensor(data, dtype=torch.float32)
        self._user_data = data is not None
        self._x_display: torch.Tensor | None = None
        self._labels = None if labels is None else torch.as_tensor(labels).long()
        self._class_names = None if class_names is None else [str(c) for c in class_names]
        self._dataset = dataset
        self._prepared = None
        self._kl: np.ndarray | None = None
        self._var: np.ndarray | None = None
        shape = getattr(model, "data_shape", None)
        if shape is None and run is not None:
            shape = tuple(run.model_config.data_shape)
        if shape is None and self._x is not None:
            shape = tuple(self._x.shape[1:])
        if shape is None:
            raise DataValidationError("the model has no data_shape; pass data=... so the pictures know the shape")
        self.data_shape = tuple(int(s) for s in shape)

    # ---- what the data are
    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3

    @property
    def latent_dim(self) -> int:
        return int(self.model.latent_dim)

    @property
    def is_sphere(self) -> bool:
        """Whether z lives on the unit sphere S^{d-1} (the vmf posterior): then pictures walk angles, and the
        lattices of normal quantiles or coordinate sweeps (which leave the sphere) are never drawn."""
        head = getattr(self.model, "prior_head", None)
        return getattr(head, "manifold", "euclidean") == "sphere"

    @property
    def data_state(self) -> dict:
        return (self.run.state.get("data") or {}) if self.run is not None else {}

    @property
    def standardization(self) -> tuple[np.ndarray, np.ndarray] | None:
        std = self.data_state.get("standardization")
        return None if std is None else (np.asarray(std[0], dtype=np.float64), np.asarray(std[1], dtype=np.float64))

    @property
    def feature_names(self) -> list[str]:
        names = (self.data_state.get("description") or {}).get("feature_names")
        d = math.prod(self.data_shape)
        return [str(n) for n in names] if names and len(names) == d else [f"x{i}" for i in range(d)]

    def to_user_units(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Flattened values back in the units of the user's file (undo the loader's standardisation)."""
        a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        a = a.reshape(a.shape[0], -1)
        std = self.standardization
        return a if std is None else a * std[1] + std[0]

    def dataset(self):
        if self._dataset is None and self.run is not None:
            self._dataset = self.run.dataset()
        return self._dataset

    def prepared(self):
        if self._prepared is None and self.run is not None:
            self._prepared = self.run.prepared(self.dataset())
        return self._prepared

    @property
    def x(self) -> torch.Tensor:
        """The split as the model sees it (binarised/dequantised with the fixed evaluation seed)."""
        if self._x is None:
            if self.run is None:
                raise DataValidationError("this picture needs data: pass data=... (a tensor [N, *data_shape])")
            self._x = self.prepared().scored(self.split)
        if self._x.shape[0] == 0:
            raise DataValidationError(f"the {self.split} split is empty; choose another split")
        if tuple(self._x.shape[1:]) != self.data_shape:
            raise DataValidationError(f"data of shape {tuple(self._x.shape[1:])} do not fit the model's data shape "
                                      f"{self.data_shape}")
        return self._x

    @property
    def x_display(self) -> torch.Tensor:
        """The split for pictures: for images the loader's values (grey levels, not one random binarisation or
        dequantisation noise; the encoder takes values in [0, 1] either way); otherwise :attr:`x`."""
        if self._user_data or not self.is_image or self.dataset() is None:
            return self.x
        if self._x_display is None:
            self._x_display = getattr(self.dataset(), self.split)
        return self._x_display if self._x_display.shape[0] else self.x

    @property
    def labels(self) -> torch.Tensor | None:
        if self._labels is None and not self._user_data and self.dataset() is not None:
            self._labels = getattr(self.dataset(), f"{self.split}_labels", None)
        return self._labels

    @property
    def class_names(self) -> list[str] | None:
        if self._class_names is None and self.dataset() is not None and self.dataset().class_names is not None:
            self._class_names = [str(c) for c in self.dataset().class_names]
        return self._class_names

    # ---- cached statistics
    @torch.no_grad()
    def encode(self, x: torch.Tensor | None = None) -> torch.Tensor:
        from .estimators import _batches, eval_mode, model_device

        x = self.x if x is None else x
        with eval_mode(self.model):
            return torch.cat([_centre(self.model.posterior(xb)).cpu()
                              for xb in _batches(x, 1000, model_device(self.model))])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        from .estimators import _batches, eval_mode, model_device

        with eval_mode(self.model):
            return torch.cat([self.model.decode(zb).cpu() for zb in _batches(z, 1024, model_device(self.model))])

    def kl_per_dim(self) -> np.ndarray:
        """Mean KL(p(z_u|x) || q(z_u)) over the split, nats per dimension."""
        if self._kl is None:
            from .estimators import per_dimension_kl
            try:
                self._kl = per_dimension_kl(self.model, self.x).numpy()
            except TypeError:
                raise DataValidationError("this posterior's KL does not split by latent dimension (the vmf KL is one "
                                          "constant); dimensions are ordered by Var_x E[z_u|x] instead") from None
        return self._kl

    def mean_variances(self) -> np.ndarray:
        """Var_x(E[z_u|x]) per dimension: the active-units statistic."""
        if self._var is None:
            from .estimators import active_units
            self._var = active_units(self.model, self.x, ACTIVE_THRESHOLD)[1].numpy()
        return self._var

    def dims_by_kl(self) -> list[int]:
        """Latent dimensions, most informative (largest KL) first; index order without data."""
        try:
            kl = self.kl_per_dim()
        except DataValidationError:
            try:
                kl = self.mean_variances()  # no per-dimension KL (sphere): the spread of the posterior centres
            except DataValidationError:
                return list(range(self.latent_dim))
        return [int(i) for i in np.argsort(-kl, kind="stable")]

    def default_dims(self) -> tuple[int, int]:
        if self.latent_dim < 2:
            raise DataValidationError("this picture needs at least 2 latent dimensions; the model has 1")
        top = self.dims_by_kl()[:2]
        return (min(top), max(top))

    def check_dims(self, dims: Sequence[int] | None) -> tuple[int, int]:
        if dims is None:
            return self.default_dims()
        dims = tuple(int(d) for d in dims)
        d = self.latent_dim
        if len(dims) != 2 or dims[0] == dims[1] or not all(0 <= i < d for i in dims):
            raise DataValidationError(f"--dims needs two different latent dimensions in 0..{d - 1}, got "
                                      f"{' '.join(map(str, dims))}")
        return dims

    def run_directory(self) -> Path | None:
        if self.run_dir is not None:
            return self.run_dir
        if self.run is not None:
            ckpt = Path(self.run.checkpoint)
            for cand in (ckpt.parent.parent, ckpt.parent, ckpt):
                if (cand / "metrics.jsonl").is_file() or (cand / "run.json").is_file():
                    return cand
        return None


def context(run, *, data=None, labels=None, class_names=None, split: str = "test", checkpoint: str = "best",
            device: str | torch.device = "cpu") -> PlotContext:
    """A :class:`PlotContext` from a run directory, a ``LoadedRun``, a ``VAE`` (then pass ``data``/``labels``),
    or a context (returned as is)."""
    if isinstance(run, PlotContext):
        return run
    if split not in ("train", "valid", "test"):
        raise DataValidationError(f"split must be train, valid or test, got {split!r}")
    from .runs import LoadedRun, load_run

    if isinstance(run, (str, Path)):
        loaded = load_run(run, checkpoint, device=device)
        return PlotContext(loaded.model, data=data, labels=labels, class_names=class_names, run=loaded,
                           run_dir=Path(run) if (Path(run) / "run.json").exists() else None, split=split)
    if isinstance(run, LoadedRun):
        return PlotContext(run.model, data=data, labels=labels, class_names=class_names, run=run, split=split)
    if hasattr(run, "posterior") and hasattr(run, "decode"):
        return PlotContext(run, data=data, labels=labels, class_names=class_names, split=split)
    raise TypeError(f"expected a run directory, a LoadedRun, a VAE or a PlotContext, got {type(run).__name__}")


# ----------------------------------------------------------------------------------------------------- helpers
def _centre(q) -> torch.Tensor:
    """Where a picture places x in latent space: the posterior's mode (the mean for a Gaussian; the mean
    direction μ on the sphere, where E[z|x] = A_d(κ) μ lies inside the ball and decodes off the manifold)."""
    try:
        return q.mode
    except NotImplementedError:
        return q.mean


def sphere_point(phi: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
    """Unit vectors from angles: (cos φ, sin φ) on S^1 (``lam`` None), else (cos λ cos φ, cos λ sin φ, sin λ) on
    S^2 with azimuth φ and elevation λ."""
    if lam is None:
        return torch.stack([torch.cos(phi), torch.sin(phi)], -1)
    return torch.stack([torch.cos(lam) * torch.cos(phi), torch.cos(lam) * torch.sin(phi), torch.sin(lam)], -1)


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("bayesvae plots need matplotlib, a dependency of bayesvae that is missing here: "
                          "pip install matplotlib") from None

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _need_image(ctx: PlotContext, kind: str) -> None:
    if not ctx.is_image:
        raise DataValidationError(
            f"plot kind {kind!r} needs image data, but this model's data are vectors of shape {ctx.data_shape}; "
            f"kinds for this run: {', '.join(applicable_kinds(ctx))}")


def _show_images(ax, images: torch.Tensor, ncol: int, pad: int = 1) -> np.ndarray:
    """Tile [N, C, H, W] images in [0, 1] into ``ax`` (grey or RGB); returns the tiled array."""
    grid = make_grid(images, ncol=ncol, pad=pad)
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return grid


def _image_fig_size(rows: int, cols: int, h: int, w: int, extra_w: float = 0.0, extra_h: float = 0.6,
                    max_side: float = 9.0) -> tuple[float, float]:
    aspect = (rows * h) / max(1, cols * w)
    width = min(max_side, max(3.5, cols * w / 14))
    height = width * aspect
    if height > max_side:
        width, height = width * max_side / height, max_side
    return width + extra_w, height + extra_h


def _normal_quantiles(n: int, lo: float = 0.05, hi: float = 0.95) -> torch.Tensor:
    p = torch.linspace(lo, hi, n, dtype=torch.float64)
    return (math.sqrt(2.0) * torch.erfinv(2 * p - 1)).float()


def _signed(v: float) -> str:
    return "0" if abs(v) < 5e-3 else f"{v:+.1f}"


def _label_colors(labels: np.ndarray, class_names: list[str] | None):
    """(colour per point, legend entries [(name, colour)] or None, colormap for a colour bar or None)."""
    classes = np.unique(labels)
    if len(classes) <= len(CLASS_COLORS):
        index = {c: i for i, c in enumerate(classes)}
        colors = np.array([CLASS_COLORS[index[c]] for c in labels])
        names = [class_names[c] if class_names and 0 <= c < len(class_names) else str(c) for c in classes]
        return colors, [(n, CLASS_COLORS[i]) for i, n in enumerate(names)], None
    return labels, None, "viridis"


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


# ------------------------------------------------------------------------------------------------------- kinds
def latent(run, *, dims: Sequence[int] | None = None, split: str = "test", data=None, labels=None,
           max_points: int = 5000, seed: int = 0, **_unused):
    """Scatter of the posterior means E[z|x] of a split, coloured by label (one colour without labels).

    Two latent dimensions are shown directly (or the two ``dims`` asked for); more are projected on their first
    two principal components, with the share of variance each explains in the axis labels; one is plotted against
    the label (or a jitter)."""
    ctx = context(run, data=data, labels=labels, split=split)
    if ctx.x_display.shape[0] < 2:
        raise DataValidationError(f"the latent picture needs at least 2 {ctx.split} examples, this split has "
                                  f"{ctx.x_display.shape[0]}; choose another split (--split train)")
    z = ctx.encode(ctx.x_display).double().numpy()
    y = ctx.labels.numpy() if ctx.labels is not None and len(ctx.labels) == len(z) else None
    keep = _subsample(len(z), max_points, seed)
    z, y = z[keep], (None if y is None else y[keep])
    d = z.shape[1]
    centre = "mean direction" if ctx.is_sphere else "posterior mean"
    if d == 1:
        rng = np.random.default_rng(seed)
        xy = np.stack([z[:, 0], (y if y is not None else np.zeros(len(z))) + rng.uniform(-0.3, 0.3, len(z))], 1)
        labels_xy = (f"$z_0$ ({centre})", "label (jittered)" if y is not None else "jitter")
        how = "1 latent dimension"
    elif dims is not None or d == 2:
        i, j = ctx.check_dims(dims) if dims is not None else (0, 1)
        xy = z[:, [i, j]]
        labels_xy = (f"$z_{{{i}}}$ ({centre})", f"$z_{{{j}}}$ ({centre})")
        how = f"latent dimensions {i} and {j}" + (f" of {d}" if d > 2 else "")
    else:
        centred = z - z.mean(0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        ratio = s ** 2 / max(float((s ** 2).sum()), 1e-300)
        xy = centred @ vt[:2].T
        labels_xy = (f"PC 1 ({100 * ratio[0]:.1f}% of variance)", f"PC 2 ({100 * ratio[1]:.1f}% of variance)")
        how = f"PCA of {d} latent dimensions ({100 * ratio[:2].sum():.1f}% of variance shown)"
    fig = _figure(6.8, 5.6)
    ax = fig.add_subplot()
    size = max(2.0, min(18.0, 4000.0 / max(1, len(xy))))
    if y is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c=_ONE_COLOR, alpha=0.6, linewidths=0)
    else:
        colors, legend, cmap = _label_colors(y, ctx.class_names)
        sc = ax.scatter(xy[:, 0], xy[:, 1], s=size, c=colors, cmap=cmap, alpha=0.7, linewidths=0)
        if legend:
            from matplotlib.lines import Line2D
            handles = [Line2D([], [], marker="o", ls="", color=c, label=n, markersize=6) for n, c in legend]
            ax.legend(handles=handles, title="label", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        else:
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(labels_xy[0])
    ax.set_ylabel(labels_xy[1])
    what = "μ(x)" if ctx.is_sphere else "E[z|x]"
    ax.set_title(f"Latent space: {what} of {len(xy)} {ctx.split} examples\n({how})", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def manifold(run, *, dims: Sequence[int] | None = None, n: int = 15, quantile_range=(0.05, 0.95), **_unused):
    """The decoded means E[x|z] over an n x n lattice of standard-normal quantiles in two latent dimensions (the
    two with the largest KL unless ``dims`` says), every other dimension at 0, its prior mean."""
    ctx = context(run)
    _need_image(ctx, "manifold")
    i, j = ctx.check_dims(dims)
    q = _normal_quantiles(n, *quantile_range)
    z = torch.zeros(n * n, ctx.latent_dim)
    for r in range(n):  # row r from the top: z_j decreasing; column c: z_i increasing
        z[r * n:(r + 1) * n, i] = q
        z[r * n:(r + 1) * n, j] = q[n - 1 - r]
    images = ctx.decode(z)
    _, _, h, w = images.shape
    fig = _figure(*_image_fig_size(n, n, h, w, extra_w=0.6, extra_h=0.8, max_side=7.5))
    ax = fig.add_subplot()
    _show_images(ax, images, ncol=n, pad=0)
    ticks = [k for k in range(n) if k % max(1, n // 5) == 0 or k == n - 1]
    ax.set_xticks([(k + 0.5) * w - 0.5 for k in ticks], [f"{float(q[k]):.2f}" for k in ticks])
    ax.set_yticks([(k + 0.5) * h - 0.5 for k in ticks], [f"{float(q[n - 1 - k]):.2f}" for k in ticks])
    ax.set_xlabel(f"$z_{{{i}}}$")
    ax.set_ylabel(f"$z_{{{j}}}$")
    lo, hi = quantile_range
    others = "" if ctx.latent_dim == 2 else ", other dimensions 0"
    ax.set_title(f"E[x|z] on standard-normal quantiles {lo:g}..{hi:g}{others}", fontsize=10)
    return fig


def samples(run, *, n: int = 64, seed: int = 0, **_unused):
    """Decoded means E[x|z] of n draws z ~ q(z) from the prior."""
    ctx = context(run)
    _need_image(ctx, "samples")
    z = _prior_draws(ctx, n, seed)
    images = ctx.decode(z)
    ncol = math.ceil(math.sqrt(n))
    _, _, h, w = images.shape
    fig = _figure(*_image_fig_size(math.ceil(n / ncol), ncol, h, w, max_side=7.0))
    ax = fig.add_subplot()
    _show_images(ax, images, ncol=ncol)
    ax.set_title(f"{n} samples: E[x|z], z ~ q(z) (prior)", fontsize=10)
    return fig


def _prior_draws(ctx: PlotContext, n: int, seed: int) -> torch.Tensor:
    """n draws from the model's prior under a fixed seed, leaving the global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ctx.model.prior.sample((n,)).float().cpu()  # drawn on the CPU generator whatever the device


def reconstructions(run, *, n: int = 16, split: str = "test", data=None, **_unused):
    """The first n examples of a split beside their reconstructions E[x|z = E[z|x]] (same positions)."""
    ctx = context(run, data=data, split=split)
    _need_image(ctx, "reconstructions")
    x = ctx.x_display[:n]
    recon = ctx.decode(ctx.encode(x))
    ncol = math.ceil(math.sqrt(x.shape[0]))
    _, _, h, w = x.shape
    fw, fh = _image_fig_size(math.ceil(x.shape[0] / ncol), ncol, h, w, max_side=4.5)
    fig = _figure(2 * fw, fh)
    for k, (images, title) in enumerate(((x, f"{ctx.split} inputs x"), (recon, "reconstructions E[x|z=E[z|x]]"))):
        ax = fig.add_subplot(1, 2, k + 1)
        _show_images(ax, images, ncol=ncol)
        ax.set_title(title, fontsize=10)
    return fig


def interpolation(run, *, pairs: int = 6, steps: int = 10, split: str = "test", data=None, labels=None,
                  seed: int = 0, **_unused):
    """Rows: two encoded examples (shown at the ends) and ``steps`` decoded points on the straight line between
    their posterior means. Pairs are drawn with a fixed seed, from different labels where labels exist."""
    ctx = context(run, data=data, labels=labels, split=split)
    _need_image(ctx, "interpolation")
    x = ctx.x_display
    if x.shape[0] < 2:
        raise DataValidationError(f"interpolation needs at least 2 {ctx.split} examples")
    rng = np.random.default_rng(seed)
    y = ctx.labels.numpy() if ctx.labels is not None and len(ctx.labels) == len(x) else None
    chosen = []
    for _ in range(pairs):
        a = int(rng.integers(len(x)))
        others = np.flatnonzero(y != y[a]) if y is not None else np.array([], dtype=int)
        pool = others if len(others) else np.delete(np.arange(len(x)), a)
        chosen.append((a, int(rng.choice(pool))))
    ends = torch.tensor(chosen)
    za, zb = ctx.encode(x[ends[:, 0]]), ctx.encode(x[ends[:, 1]])
    t = torch.linspace(0, 1, steps)[None, :, None]
    if ctx.is_sphere:  # along the great circle (slerp): every point stays on the sphere
        omega = torch.arccos((za * zb).sum(-1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None, None]
        z = (torch.sin((1 - t) * omega) * za[:, None] + torch.sin(t * omega) * zb[:, None]) / torch.sin(omega)
    else:
        z = (1 - t) * za[:, None] + t * zb[:, None]  # [pairs, steps, d]
    decoded = ctx.decode(z.reshape(-1, ctx.latent_dim)).reshape(pairs, steps, *ctx.data_shape)
    rows = torch.cat([x[ends[:, 0]][:, None], decoded, x[ends[:, 1]][:, None]], 1)
    _, _, h, w = x.shape
    fig = _figure(*_image_fig_size(pairs, steps + 2, h, w, extra_h=0.9, max_side=9.5))
    ax = fig.add_subplot()
    _show_images(ax, rows.reshape(-1, *ctx.data_shape), ncol=steps + 2)
    ax.set_xticks([(w + 1) * 0.5 + 0.5, (steps + 1.5) * (w + 1)], ["input A", "input B"])
    how = "Great-circle (slerp)" if ctx.is_sphere else "Linear"
    ax.set_title(f"{how} interpolation in z between encoded {ctx.split} examples ({steps} steps, ends included)",
                 fontsize=10)
    return fig


def traversals(run, *, max_dims: int = 10, steps: int = 11, span: float = 3.0, **_unused):
    """Rows: one latent dimension each (up to ``max_dims``, largest KL first) swept over [-span, span] with the
    others at 0; the decoded means E[x|z]."""
    ctx = context(run)
    _need_image(ctx, "traversals")
    order = ctx.dims_by_kl()[:max_dims]
    try:
        kl_values = ctx.kl_per_dim()
    except DataValidationError:
        kl_values = None
    values = torch.linspace(-span, span, steps)
    z = torch.zeros(len(order), steps, ctx.latent_dim)
    for r, u in enumerate(order):
        z[r, :, u] = values
    images = ctx.decode(z.reshape(-1, ctx.latent_dim))
    _, _, h, w = images.shape
    fig = _figure(*_image_fig_size(len(order), steps, h, w, extra_w=1.2, extra_h=0.9, max_side=8.0))
    ax = fig.add_subplot()
    _show_images(ax, images, ncol=steps)
    ax.set_yticks([1 + r * (h + 1) + h / 2 - 0.5 for r in range(len(order))],
                  [f"$z_{{{u}}}$" + (f"  KL {kl_values[u]:.2f}" if kl_values is not None else "") for u in order],
                  fontsize=8)
    ticks = [0, steps // 2, steps - 1]
    ax.set_xticks([1 + k * (w + 1) + w / 2 - 0.5 for k in ticks], [_signed(float(values[k])) for k in ticks])
    ax.set_xlabel("value of the traversed dimension (others 0)")
    shown = f"{len(order)} of {ctx.latent_dim}" if len(order) < ctx.latent_dim else f"all {len(order)}"
    ax.set_title(f"Latent traversals: {shown} dimensions, largest KL first", fontsize=10)
    return fig


def kl(run, *, split: str = "test", data=None, threshold: float = ACTIVE_THRESHOLD, **_unused):
    """Per-dimension KL(p(z_u|x) || q(z_u)) (top) and the active-units statistic Var_x(E[z_u|x]) with its
    threshold (bottom); active dimensions are coloured."""
    ctx = context(run, data=data, split=split)
    kl_values, var = ctx.kl_per_dim(), ctx.mean_variances()
    active = var > threshold
    d = len(kl_values)
    colors = np.where(active, "#1f77b4", "#b0b0b0")
    fig = _figure(max(6.0, min(14.0, 0.22 * d + 3)), 5.4)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.bar(np.arange(d), kl_values, color=colors)
    ax1.set_ylabel("KL (nats)")
    ax1.set_ylim(0, max(float(kl_values.max()), 1e-3) * 1.35)  # headroom for the legend
    ax1.set_title(f"KL per latent dimension ({ctx.split}): total {kl_values.sum():.2f} nats; "
                  f"{int(active.sum())} of {d} units active", fontsize=10)
    from matplotlib.patches import Patch
    ax1.legend(handles=[Patch(color="#1f77b4", label=f"active (Var E[z|x] > {threshold:g})"),
                        Patch(color="#b0b0b0", label="inactive")], fontsize=8, loc="upper right")
    ax2.bar(np.arange(d), np.maximum(var, 1e-8), color=colors)
    ax2.axhline(threshold, color="#d62728", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax2.set_yscale("log")
    ax2.set_ylim(min(1e-3, float(np.maximum(var, 1e-8).min()) / 2), max(float(var.max()), threshold) * 8)
    ax2.set_ylabel("Var$_x$(E[$z_u$|x])")
    ax2.set_xlabel("latent dimension u")
    ax2.legend(fontsize=8, loc="upper right")
    if d <= 30:
        ax2.set_xticks(np.arange(d))
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.3)
    return fig


def _read_metrics(ctx: PlotContext) -> list[dict]:
    run_dir = ctx.run_directory()
    path = None if run_dir is None else run_dir / "metrics.jsonl"
    if path is None or not path.is_file():
        raise DataValidationError("learning curves need the run directory's metrics.jsonl"
                                  + (f" ({path} is missing)" if path is not None else "; pass a run directory"))
    records = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataValidationError(f"{path}, line {k}: not JSON") from None
    if not records:
        raise DataValidationError(f"{path} holds no epochs yet")
    return records


def _loss_titles(run) -> tuple[str, str]:
    """(title of the bold curve, note for the two term panels): what the logged ``loss`` is for this run's objective.
    For the ELBO it is the seed's L = reconstruction + KL; for the IWAE objective it is -IWAE_K, and the two panels
    show the ELBO's terms, which do not add up to it."""
    try:
        loaded = context(run).run
    except Exception:  # noqa: BLE001 - a bare model or metrics alone: the ELBO is the default objective
        loaded = None
    config = getattr(loaded, "train_config", None)
    if config is not None and config.objective == "iwae":
        return (f"loss = -IWAE bound, K = {config.samples} (nats; not recon + KL)", " (ELBO term)")
    return ("total loss L = reconstruction + KL (nats)", "")


def curves(run, *, metrics: list[dict] | None = None, **_unused):
    """Learning curves per epoch: the total loss (eq. 24; the one indicator of progress, bold) and its two parts,
    reconstruction NLL and KL, for the training and validation sets."""
    records = metrics if metrics is not None else _read_metrics(context(run))
    total_title, term_note = _loss_titles(run)

    def series(key):
        pts = [(r.get("epoch", k + 1), r.get(key)) for k, r in enumerate(records)]
        pts = [(e, v) for e, v in pts if isinstance(v, (int, float)) and math.isfinite(v)]
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

    fig = _figure(10.0, 5.0)
    gs = fig.add_gridspec(2, 2, width_ratios=(1.6, 1))
    ax_total = fig.add_subplot(gs[:, 0])
    ax_rec, ax_kl = fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 1])
    for ax, key, title, bold in ((ax_total, "loss", total_title, True),
                                 (ax_rec, "reconstruction_nll", "reconstruction  E[-ln q(x|z)]" + term_note, False),
                                 (ax_kl, "kl", "KL(p(z|x) || q(z))" + term_note, False)):
        for split, style, color in (("train", "-", "#1f77b4"), ("valid", "--", "#ff7f0e")):
            e, v = series(f"{split}_{key}")
            if len(v):
                ax.plot(e, v, style, color=color, lw=2.6 if bold else 1.4, marker="o" if len(v) < 30 else None,
                        ms=3, label=split)
        ax.set_title(title, fontsize=11 if bold else 9, fontweight="bold" if bold else "normal")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="#777")
    e, v = series("valid_loss")
    if len(v):
        best = int(np.argmin(v))
        ax_total.axvline(e[best], color="#999", lw=0.8, ls=":")
        right = len(e) > 1 and e[best] > (e[0] + e[-1]) / 2
        ax_total.annotate(f"best valid {v[best]:.3f}\n(epoch {int(e[best])})", (e[best], v[best]),
                          textcoords="offset points", xytext=(-8 if right else 8, 14), fontsize=8,
                          ha="right" if right else "left")
    from matplotlib.ticker import MaxNLocator
    for ax in (ax_total, ax_rec, ax_kl):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_total.set_xlabel("epoch")
    ax_total.set_ylabel("nats per example")
    ax_kl.set_xlabel("epoch")
    return fig


def histograms(run, *, split: str = "test", data=None, num_samples: int | None = None, max_features: int = 16,
               seed: int = 0, bins: int = 30, **_unused):
    """Tabular runs: per-feature histograms of the data and of model draws x ~ q(x|z), z ~ q(z), in the units of
    the user's file (the loader's standardisation undone); up to ``max_features`` small multiples."""
    ctx = context(run, data=data, split=split)
    if ctx.is_image:
        raise DataValidationError(f"plot kind 'histograms' is for tabular data; this run holds images of shape "
                                  f"{ctx.data_shape}; kinds for this run: {', '.join(applicable_kinds(ctx))}")
    real = ctx.to_user_units(ctx.x)
    m = num_samples or max(1000, real.shape[0])
    z = _prior_draws(ctx, m, seed)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        from .estimators import eval_mode
        with eval_mode(ctx.model):
            from .estimators import model_device
            drawn = ctx.model.likelihood(z.to(model_device(ctx.model))).sample().cpu()
    fake = ctx.to_user_units(drawn)
    names = ctx.feature_names
    k = min(max_features, real.shape[1])
    ncol = min(4, k)
    nrow = math.ceil(k / ncol)
    fig = _figure(3.0 * ncol, 2.3 * nrow + 0.5)
    gs = fig.add_gridspec(nrow, ncol)
    for f in range(k):
        ax = fig.add_subplot(gs[f // ncol, f % ncol])
        both = np.concatenate([real[:, f], fake[:, f]])
        lo, hi = np.percentile(both, [0.5, 99.5])
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        ax.hist(np.clip(real[:, f], lo, hi), bins=edges, density=True, color="#1f77b4", alpha=0.45,
                label=f"data ({ctx.split})")
        ax.hist(np.clip(fake[:, f], lo, hi), bins=edges, density=True, histtype="step", color="#d62728", lw=1.5,
                label="model x ~ q(x|z)")
        ax.set_title(names[f], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
        if f == 0:
            ax.legend(fontsize=7)
    more = f" (first {k} of {real.shape[1]} features)" if k < real.shape[1] else ""
    fig.suptitle(f"Per-feature distributions: {real.shape[0]} {ctx.split} rows vs {m} model draws{more}",
                 fontsize=10)
    return fig


def sphere_dims(ctx: PlotContext) -> tuple[int, ...]:
    """The latent dimensions a sphere picture walks: (0, 1) for d = 2, (0, 1, 2) for d = 3, else the three with
    the largest Var_x E[z_u|x] (in index order); the walk stays on the unit sphere of those dimensions."""
    d = ctx.latent_dim
    if d <= 3:
        return tuple(range(d))
    return tuple(sorted(ctx.dims_by_kl()[:3]))


def _angles_of(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth φ, elevation λ) of 3-vectors (normalised first; for d > 3 the projection on three dimensions)."""
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return np.arctan2(z[:, 1], z[:, 0]), np.arcsin(np.clip(z[:, 2], -1, 1))


def sphere(run, *, n: int = 16, split: str = "test", data=None, labels=None, max_points: int = 3000, seed: int = 0,
           **_unused):
    """For a latent on the sphere (vmf). d = 2: the latent circle, the mean directions μ(x) of a split placed at
    their angle θ and coloured by label (radially spread by label so classes do not hide each other), and the
    decoded means E[x|z] at ``n`` angles around the circle. d ≥ 3: the mean directions as azimuth φ and elevation
    λ on the 2-sphere of three latent dimensions, and E[x|z] over a lattice of (φ, λ)."""
    ctx = context(run, data=data, labels=labels, split=split)
    _need_image(ctx, "sphere")
    if not ctx.is_sphere:
        raise DataValidationError("the sphere picture is for latents on the unit sphere (--posterior vmf); use "
                                  "latent and manifold")
    dims = sphere_dims(ctx)
    z = ctx.encode(ctx.x_display).double().numpy()[:, list(dims)]
    y = ctx.labels.numpy() if ctx.labels is not None and len(ctx.labels) == len(z) else None
    keep = _subsample(len(z), max_points, seed)
    z, y = z[keep], (None if y is None else y[keep])
    colors, legend, cmap = _label_colors(y, ctx.class_names) if y is not None else (_ONE_COLOR, None, None)
    size = max(2.0, min(14.0, 3000.0 / max(1, len(z))))
    if len(dims) == 2:
        angles = -math.pi + 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
        images = ctx.decode(sphere_point(angles).float())
        _, _, h, w = images.shape
        fig = _figure(max(7.0, n * 0.5), 7.6)
        top, bottom = fig.subfigures(2, 1, height_ratios=[5.2, 1.6])
        ax = top.add_subplot()
        theta = np.arctan2(z[:, 1], z[:, 0])
        rings = np.searchsorted(np.unique(y), y) if y is not None else np.zeros(len(z))
        radius = 1.0 + 0.035 * rings + np.random.default_rng(seed).uniform(-0.01, 0.01, len(z))
        t = np.linspace(0, 2 * np.pi, 400)
        ax.plot(np.cos(t), np.sin(t), color="#b5b5b5", lw=1)
        ax.scatter(radius * np.cos(theta), radius * np.sin(theta), s=size, c=colors, cmap=cmap, alpha=0.7,
                   linewidths=0)
        for k in range(n):
            a = float(angles[k])
            ax.plot([0.9 * math.cos(a), 0.95 * math.cos(a)], [0.9 * math.sin(a), 0.95 * math.sin(a)], color="#555",
                    lw=1)
            if k % 2 == 0:
                ax.text(0.8 * math.cos(a), 0.8 * math.sin(a), f"{math.degrees(a):.0f}°", ha="center",
                        va="center", fontsize=7, color="#555")
        ax.set_aspect("equal")
        ax.set_xlim(-1.55, 1.55)
        ax.set_ylim(-1.45, 1.45)
        ax.set_xlabel(f"$z_{{{dims[0]}}}$ = cos θ")
        ax.set_ylabel(f"$z_{{{dims[1]}}}$ = sin θ")
        ax.set_title(f"Latent circle S¹: mean directions μ(x) of {len(z)} {ctx.split} examples at their angle "
                     "(rings: labels)", fontsize=10)
        if legend:
            from matplotlib.lines import Line2D
            ax.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=nm, markersize=6) for nm, c in legend],
                      title="label", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        bx = bottom.add_subplot()
        _show_images(bx, images, ncol=n)
        ticks = list(range(0, n, max(1, n // 8)))
        bx.set_xticks([1 + k * (w + 1) + w / 2 - 0.5 for k in ticks],
                      [f"{math.degrees(float(angles[k])):.0f}°" for k in ticks], fontsize=8)
        bx.set_title("E[x|z] at z = (cos θ, sin θ), θ around the circle", fontsize=9)
        return fig
    rows, cols = 7, 12
    phi = -math.pi + 2 * math.pi * (torch.arange(cols, dtype=torch.float64) + 0.5) / cols
    lam = torch.linspace(math.radians(67.5), -math.radians(67.5), rows, dtype=torch.float64)
    grid = torch.zeros(rows * cols, ctx.latent_dim, dtype=torch.float64)
    grid[:, list(dims)] = sphere_point(phi.repeat(rows), lam.repeat_interleave(cols))
    images = ctx.decode(grid.float())
    _, _, h, w = images.shape
    fig = _figure(13.5, 5.2)
    left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.25])
    ax = left.add_subplot()
    az, el = _angles_of(z)
    ax.scatter(np.degrees(az), np.degrees(el), s=size, c=colors, cmap=cmap, alpha=0.7, linewidths=0)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 90))
    ax.set_yticks(range(-90, 91, 45))
    ax.set_xlabel(f"azimuth φ (degrees) in the ($z_{{{dims[0]}}}$, $z_{{{dims[1]}}}$) plane")
    ax.set_ylabel(f"elevation λ towards $z_{{{dims[2]}}}$ (degrees)")
    extra = f" projected on dimensions {dims}" if ctx.latent_dim > 3 else ""
    ax.set_title(f"Mean directions μ(x) of {len(z)} {ctx.split} examples{extra}", fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        from matplotlib.lines import Line2D
        ax.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=nm, markersize=5) for nm, c in legend],
                  fontsize=7, loc="lower left", ncol=5, frameon=False)
    bx = right.add_subplot()
    _show_images(bx, images, ncol=cols)
    bx.set_xticks([1 + k * (w + 1) + w / 2 - 0.5 for k in range(0, cols, 3)],
                  [f"{math.degrees(float(phi[k])):.0f}°" for k in range(0, cols, 3)], fontsize=8)
    bx.set_yticks([1 + r * (h + 1) + h / 2 - 0.5 for r in range(rows)],
                  [f"{math.degrees(float(lam[r])):.0f}°" for r in range(rows)], fontsize=8)
    bx.set_xlabel("azimuth φ")
    bx.set_ylabel("elevation λ")
    others = "" if ctx.latent_dim == 3 else ", other dimensions 0"
    bx.set_title(f"E[x|z] over the two angles{others}", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------- dispatching
KINDS: dict[str, Any] = {
    "latent": latent, "manifold": manifold, "samples": samples, "reconstructions": reconstructions,
    "interpolation": interpolation, "traversals": traversals, "kl": kl, "curves": curves, "histograms": histograms,
    "sphere": sphere,
}
IMAGE_KINDS = ("manifold", "samples", "reconstructions", "interpolation", "traversals", "sphere")
#: Kinds that assume z in R^d (normal quantiles, coordinate sweeps, a per-dimension KL): never drawn on a sphere.
EUCLIDEAN_KINDS = ("manifold", "traversals", "kl")
TABULAR_KINDS = ("histograms",)


def _is_text(ctx) -> bool:
    return getattr(ctx.model.likelihood_head, "name", "") == "autoregressive"


def applicable_kinds(run) -> list[str]:
    """The kinds that apply to a run: image kinds for images, ``histograms`` for tabular data, the rest always
    (``manifold`` needs two latent dimensions)."""
    ctx = context(run)
    text = _is_text(ctx)
    out = []
    for kind in KINDS:
        if kind in IMAGE_KINDS and not ctx.is_image or kind in TABULAR_KINDS and ctx.is_image:
            continue
        if kind in TABULAR_KINDS and text:
            continue  # text: no feature histograms (the report shows sentences)
        if kind == "manifold" and ctx.latent_dim < 2:
            continue
        if (kind in EUCLIDEAN_KINDS and ctx.is_sphere) or (kind == "sphere" and not ctx.is_sphere):
            continue
        out.append(kind)
    return out


def plot(run, kind: str, **options):
    """``plots.plot(run, "manifold", dims=(0, 1))``: the figure of one kind by name."""
    if kind not in KINDS:
        raise DataValidationError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    ctx = context(run, data=options.pop("data", None), labels=options.pop("labels", None),
                  split=options.pop("split", "test"))
    if kind == "interpolation" and _is_text(ctx):
        raise DataValidationError("a text run's interpolation is sentences, not a picture: `bayesvae plot RUN "
                                  "interpolation` writes them (in Python: bayesvae.text.cli.interpolation_pairs)")
    if kind not in applicable_kinds(ctx):
        why = ("needs image data" if kind in IMAGE_KINDS and not ctx.is_image else
               "is for tabular data" if kind in TABULAR_KINDS else
               "assumes a latent in R^d (this one is on the unit sphere; see the sphere kind)"
               if kind in EUCLIDEAN_KINDS and ctx.is_sphere else
               "is for a latent on the unit sphere (--posterior vmf)" if kind == "sphere" else
               "needs at least 2 latent dimensions")
        kinds = ", ".join(applicable_kinds(ctx))
        if _is_text(ctx):
            kinds += ", and interpolation as sentences (`bayesvae plot RUN interpolation`)"
        raise DataValidationError(f"plot kind {kind!r} {why}; kinds for this run: {kinds}")
    return KINDS[kind](ctx, **options)
