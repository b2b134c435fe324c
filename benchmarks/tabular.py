"""Tabular densities: held-out log-likelihood per example (nats, in the units of the data) and anomaly ROC-AUC of
bayesvae's VAEDensity (its defaults, each change of their revision taken back, ``select=True``) against
GaussianMixture (components by BIC, or by a validation split), KernelDensity (bandwidth by cross-validation) and
IsolationForest (AUC only), on scikit-learn's five shipped tables and three synthetic sets of known density (two
moons, a curved 3-D manifold in 20-D, a Gaussian mixture; ``--extra`` adds the earlier gaussian-8d and funnel-6d).

    OMP_NUM_THREADS=1 python benchmarks/tabular.py --repeats 2 --workers 2 --json benchmarks/results/tabular.json \
        --markdown benchmarks/results/tabular.md
    python benchmarks/tabular.py --smoke

Protocol, the same for every contender:
  * Splits: 70 % train, 30 % test, seeds 0..R-1 (``--repeats R``, default 3); a contender tunes itself on the
    training rows only, with the split's seed (VAEDensity and the validation-chosen mixture hold 15 % of them
    out). Figures: the mean over the splits ± its standard error over the splits; "minus bayesvae defaults" is
    the paired difference of the test log-likelihoods, split by split.
  * Dequantisation: every column is given uniform noise U(-h/2, h/2), h = the smallest gap between its distinct
    values (its resolution: 1 for the digits' counts, 0.1 for iris, 0.095 for diabetes' two-valued, pre-scaled
    sex column, 1e-6 to 1 for recorded measurements), with a fixed seed, before the split. A density of values on
    a grid is otherwise unbounded (a kernel of bandwidth -> 0 on repeated values); after it, a row's
    log p + Σ_j ln h_j is, in expectation over the noise, a lower bound on the log-probability of its recorded
    values.
  * Units: GaussianMixture and KernelDensity are fitted on features standardised with the training rows' mean and
    std, and their log-densities get the Jacobian -Σ ln s_j, as VAEDensity does internally: every figure is a
    log-density of the same (dequantised) data in their own units. The synthetic sets' row "true density" is the
    exact log p of the test rows.
  * Outliers (ROC-AUC): to the test rows are added 10 % as many (at least 5) synthetic rows whose every feature is
    copied from an independently chosen test row: the marginals are those of the data, the dependence between
    features is broken. A row's anomaly score is -log p(x) (IsolationForest: -score_samples).

A contender is a name and a function ``fit(x_train, seed) -> Scorer``; add one to ``CONTENDERS`` (or pass
``contenders=`` to :func:`run`) to put it in the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bayesvae as bv  # noqa: E402
import machine  # noqa: E402  (benchmarks/machine.py)

TRAIN_SHARE, SPLIT_SEED, NOISE_SEED, OUTLIER_SEED = 0.7, 0, 1, 2
OUTLIER_SHARE, MIN_OUTLIERS = 0.1, 5


@dataclass(frozen=True)
class Scorer:
    """A fitted contender: ``log_density(x)`` in nats per row in the data's units (None: it has no density) and
    ``anomaly(x)``, higher for more anomalous rows; ``note`` says what it chose on this split (the mixture's
    components; the kernel's bandwidth in standard deviations; the VAE's epochs)."""

    anomaly: Callable[[np.ndarray], np.ndarray]
    log_density: Callable[[np.ndarray], np.ndarray] | None = None
    note: str = ""


@dataclass(frozen=True)
class Contender:
    name: str
    fit: Callable[[np.ndarray, int], Scorer]


def _density(log_density: Callable[[np.ndarray], np.ndarray], note: str) -> Scorer:
    return Scorer(anomaly=lambda x: -log_density(x), log_density=log_density, note=note)


def _standardized(x_train: np.ndarray):
    """(standardise, Jacobian): the training rows' z-score and -Σ ln s_j, the log-density correction."""
    mean, std = x_train.mean(0), x_train.std(0)
    return (lambda x: (x - mean) / std), -float(np.log(std).sum())


def fit_gaussian_mixture(x_train: np.ndarray, seed: int, max_components: int = 10) -> Scorer:
    """Full-covariance GaussianMixture, 1..max_components components, the lowest BIC on the training rows."""
    from sklearn.mixture import GaussianMixture

    z, jacobian = _standardized(x_train)
    fits = [GaussianMixture(k, covariance_type="full", random_state=seed).fit(z(x_train))
            for k in range(1, max_components + 1)]
    best = min(fits, key=lambda g: g.bic(z(x_train)))
    return _density(lambda x: best.score_samples(z(x)) + jacobian, f"K = {best.n_components}")


KDE_BANDWIDTHS = tuple(np.logspace(-1.5, 0.5, 13))


def fit_kernel_density(x_train: np.ndarray, seed: int, bandwidths=KDE_BANDWIDTHS) -> Scorer:
    """Gaussian KernelDensity on standardised features, bandwidth by 5-fold cross-validated log-likelihood."""
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    z, jacobian = _standardized(x_train)
    search = GridSearchCV(KernelDensity(), {"bandwidth": list(bandwidths)},
                          cv=KFold(5, shuffle=True, random_state=seed)).fit(z(x_train))
    kde = search.best_estimator_
    return _density(lambda x: kde.score_samples(z(x)) + jacobian, f"h = {kde.bandwidth:.3g} sd")


def fit_isolation_forest(x_train: np.ndarray, seed: int) -> Scorer:
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=200, random_state=seed).fit(x_train)
    return Scorer(anomaly=lambda x: -forest.score_samples(x))


VALID_SHARE = 0.15
"""The share of its training rows that a contender choosing on a validation split holds out (VAEDensity's default
``validation_fraction``, and the GaussianMixture chosen on validation)."""


def fit_gaussian_mixture_validation(x_train: np.ndarray, seed: int, max_components: int = 10) -> Scorer:
    """GaussianMixture with 1..max_components components, full or diagonal covariances, chosen by the mean
    log-likelihood of 15 % of the training rows held out (seeded), then refitted on all training rows."""
    from sklearn.mixture import GaussianMixture

    z, jacobian = _standardized(x_train)
    perm = np.random.default_rng(seed).permutation(len(x_train))
    n_valid = max(1, int(round(VALID_SHARE * len(x_train))))
    fit_rows, valid_rows = z(x_train)[perm[n_valid:]], z(x_train)[perm[:n_valid]]
    grid = [(k, c) for c in ("full", "diag") for k in range(1, max_components + 1) if k <= len(fit_rows)]
    scores = {}
    for k, c in grid:
        try:
            scores[(k, c)] = GaussianMixture(k, covariance_type=c, random_state=seed).fit(fit_rows).score(valid_rows)
        except ValueError:  # too few rows for k components' covariances
            continue
    k, c = max(scores, key=lambda key: scores[key])
    best = GaussianMixture(k, covariance_type=c, random_state=seed).fit(z(x_train))
    return _density(lambda x: best.score_samples(z(x)) + jacobian, f"K = {k} {c}")


def fit_vae(x_train: np.ndarray, seed: int, **settings) -> Scorer:
    """VAEDensity as shipped: every size "auto" (bayesvae.sizing), unless ``settings`` say otherwise."""
    vae = bv.VAEDensity(random_state=seed, **settings).fit(x_train)
    return _density(vae.score_samples, f"h {vae.hidden_[0]} d {vae.latent_dim_}, {vae.n_iter_} ep")


def fit_vae_select(x_train: np.ndarray, seed: int, **settings) -> Scorer:
    """VAEDensity(select=True): the grid of bayesvae.selection.candidates, chosen on its validation rows."""
    vae = bv.VAEDensity(random_state=seed, select=True, **settings).fit(x_train)
    return _density(vae.score_samples, f"h {vae.hidden_[0]} d {vae.latent_dim_}")


def fit_vae_previous(x_train: np.ndarray, seed: int, **settings) -> Scorer:
    """The defaults before the revision of docs/tabular-defaults.md: Gaussian decoder, ELBO, d = ceil(D / 4)."""
    d = min(x_train.shape[1], 32, max(4, math.ceil(x_train.shape[1] / 4)))
    return fit_vae(x_train, seed, likelihood="gaussian-learned", objective="elbo", latent_dim=d,
                   hidden=(max(64, 16 * math.ceil(4 * d / 16)),), **settings)


def fit_vae_quarter(x_train: np.ndarray, seed: int, **settings) -> Scorer:
    """The defaults with the previous latent rule, d = ceil(D / 4) (at least 4, at most D and 32)."""
    d = min(x_train.shape[1], 32, max(4, math.ceil(x_train.shape[1] / 4)))
    return fit_vae(x_train, seed, latent_dim=d, hidden=(max(64, 16 * math.ceil(4 * d / 16)),), **settings)


#: bayesvae's rows: the defaults, each of the three levers of the revision taken back alone, the defaults before
#: it, and the selection on the validation rows.
VAE_CONTENDERS = [
    Contender("bayesvae defaults", fit_vae),
    Contender("bayesvae gaussian-learned", partial(fit_vae, likelihood="gaussian-learned")),
    Contender("bayesvae ELBO", partial(fit_vae, objective="elbo")),
    Contender("bayesvae d = D/4", fit_vae_quarter),
    Contender("bayesvae previous defaults", fit_vae_previous),
    Contender("bayesvae --select", fit_vae_select),
]
CONTENDERS = [
    *VAE_CONTENDERS,
    Contender("GaussianMixture (BIC)", fit_gaussian_mixture),
    Contender("GaussianMixture (valid)", fit_gaussian_mixture_validation),
    Contender("KernelDensity (CV)", fit_kernel_density),
    Contender("IsolationForest", fit_isolation_forest),
]
REFERENCE = "bayesvae defaults"


# ----------------------------------------------------------------------------------------------------- data sets
@dataclass(frozen=True)
class Table:
    name: str
    x: np.ndarray
    true_log_density: Callable[[np.ndarray], np.ndarray] | None = None
    """Synthetic sets: the exact log p (their values are continuous, so they are not dequantised)."""


def _sklearn_table(name: str) -> np.ndarray:
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine, "iris": datasets.load_iris,
              "diabetes": datasets.load_diabetes, "digits": datasets.load_digits}[name]
    return np.asarray(loader().data, dtype=np.float64)


def correlated_gaussian(n: int = 3000, dim: int = 8, seed: int = 10) -> Table:
    """N(μ, Σ) with a random Σ = A Aᵀ / dim + 0.1 I: the family of GaussianMixture(1)."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    true = multivariate_normal(rng.normal(size=dim), a @ a.T / dim + 0.1 * np.eye(dim))
    return Table(f"gaussian-{dim}d", true.rvs(n, random_state=seed + 1), true.logpdf)


def funnel(n: int = 3000, dim: int = 6, seed: int = 20) -> Table:
    """Neal's funnel: v ~ N(0, 1.5²), x_i | v ~ N(0, e^v), i = 1..dim-1: the scale of every other feature depends on
    the first, which no finite Gaussian mixture captures exactly."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    v = rng.normal(0.0, 1.5, size=n)
    x = np.column_stack([v, rng.normal(size=(n, dim - 1)) * np.exp(v / 2)[:, None]])

    def log_density(rows: np.ndarray) -> np.ndarray:
        s = np.exp(rows[:, 0] / 2)[:, None]
        return norm.logpdf(rows[:, 0], 0.0, 1.5) + norm.logpdf(rows[:, 1:], 0.0, s).sum(1)

    return Table(f"funnel-{dim}d", x, log_density)


def two_moons(n: int = 1000, noise: float = 0.1, seed: int = 30) -> Table:
    """scikit-learn's two moons with the arc position drawn, not on a grid: t ~ U(0, π), a moon chosen with
    probability 1/2 (upper: (cos t, sin t); lower: (1 - cos t, 1/2 - sin t)), plus N(0, noise² I). The density is
    an integral over t, computed by the midpoint rule on 2,000 nodes per moon (node spacing 0.0016, 60 times
    smaller than the noise: the rule's error is far below 1e-6 nats)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    centre = np.where(upper[:, None], np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    x = centre + noise * rng.normal(size=(n, 2))
    nodes = (np.arange(2000) + 0.5) * np.pi / 2000
    centres = np.r_[np.c_[np.cos(nodes), np.sin(nodes)], np.c_[1 - np.cos(nodes), 0.5 - np.sin(nodes)]]

    def log_density(rows: np.ndarray) -> np.ndarray:
        d2 = ((rows[:, None, :] - centres[None]) ** 2).sum(-1)
        log_k = -d2 / (2 * noise**2) - np.log(2 * np.pi * noise**2)
        m = log_k.max(1, keepdims=True)
        return (m[:, 0] + np.log(np.exp(log_k - m).mean(1))).astype(np.float64)

    return Table(f"two-moons-{n}", x, log_density)


def curved_manifold(n: int = 1000, dim: int = 20, noise: float = 0.2, seed: int = 40) -> Table:
    """Points near a curved 3-D manifold in ``dim`` dimensions: u ~ U(-1, 1)³, x = A tanh(B u + c) + N(0, noise² I)
    with fixed random A [dim, 8], B [8, 3], c [8] (the map bends the cube; its image spans all ``dim`` axes). The
    density ∫ N(x; f(u), noise² I) p(u) du is computed by the midpoint rule on 40³ nodes of the cube (against 64³
    nodes: within 0.02 nats on every row, 1e-4 nats on the mean of 60 rows)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, 8)) / np.sqrt(8) * 1.5
    b, c = rng.normal(size=(8, 3)) * 1.2, rng.normal(size=8) * 0.5

    def f(u: np.ndarray) -> np.ndarray:
        return np.tanh(u @ b.T + c) @ a.T

    x = f(rng.uniform(-1, 1, (n, 3))) + noise * rng.normal(size=(n, dim))

    def log_density(rows: np.ndarray, nodes_per_axis: int = 40) -> np.ndarray:
        g = (np.arange(nodes_per_axis) + 0.5) / nodes_per_axis * 2 - 1
        centres = f(np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3))
        c2 = (centres**2).sum(1)
        out = np.empty(len(rows))
        for i in range(0, len(rows), 64):
            r = rows[i:i + 64]
            d2 = (r**2).sum(1)[:, None] - 2 * r @ centres.T + c2[None]
            log_k = -np.maximum(d2, 0) / (2 * noise**2)
            m = log_k.max(1, keepdims=True)
            out[i:i + 64] = m[:, 0] + np.log(np.exp(log_k - m).mean(1))
        return out - 0.5 * dim * np.log(2 * np.pi * noise**2)

    return Table(f"manifold-{n}", x, log_density)


def gaussian_mixture(n: int = 1000, dim: int = 6, components: int = 3, seed: int = 50) -> Table:
    """A mixture of ``components`` Gaussians in ``dim`` dimensions with random means (spread 3) and random full
    covariances Σ_k = A_k A_kᵀ / dim + 0.1 I, equal weights: the family of GaussianMixture, which should win here."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(components):
        a = rng.normal(size=(dim, dim))
        parts.append(multivariate_normal(3 * rng.normal(size=dim), a @ a.T / dim + 0.1 * np.eye(dim)))
    which = rng.integers(0, components, n)
    x = np.stack([parts[k].rvs(random_state=rng) for k in which])

    def log_density(rows: np.ndarray) -> np.ndarray:
        logs = np.stack([p.logpdf(rows) for p in parts], 1).reshape(len(rows), components)
        m = logs.max(1, keepdims=True)
        return m[:, 0] + np.log(np.exp(logs - m).mean(1))

    return Table(f"gmm-{n}", x, log_density)


SHIPPED = ("breast_cancer", "wine", "digits", "diabetes", "iris")
TABLES = SHIPPED


def resolution(column: np.ndarray) -> float:
    """The smallest gap between the distinct values of a column (its recording resolution)."""
    gaps = np.diff(np.unique(column))
    return float(gaps.min()) if gaps.size else 1.0


def dequantize(x: np.ndarray, seed: int = NOISE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """x + U(-h/2, h/2) per column (h: :func:`resolution`); returns the noisy table and h."""
    h = np.array([resolution(c) for c in x.T])
    return x + (np.random.default_rng(seed).random(x.shape) - 0.5) * h, h


def split(x: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(len(x))
    n_train = int(round(TRAIN_SHARE * len(x)))
    return x[perm[:n_train]], x[perm[n_train:]]


def outliers(x_test: np.ndarray, seed: int = OUTLIER_SEED) -> np.ndarray:
    """Rows whose every feature comes from an independently chosen test row (marginals kept, dependence broken)."""
    rng = np.random.default_rng(seed)
    m = max(MIN_OUTLIERS, int(round(OUTLIER_SHARE * len(x_test))))
    return np.column_stack([x_test[rng.integers(0, len(x_test), m), j] for j in range(x_test.shape[1])])


def _auc(inlier_scores: np.ndarray, outlier_scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(inlier_scores)), np.ones(len(outlier_scores))]
    return float(roc_auc_score(labels, np.r_[inlier_scores, outlier_scores]))


def evaluate_split(table: Table, contenders, repeat: int) -> list[dict]:
    """One split (seed ``repeat``): each contender fitted with seed ``repeat`` on the training rows, then the
    mean log-likelihood of the test rows and the ROC-AUC of test rows against injected outliers."""
    if table.true_log_density is None:
        x, _ = dequantize(table.x)
    else:
        x = table.x
    x_train, x_test = split(x, SPLIT_SEED + repeat)
    x_out = outliers(x_test, OUTLIER_SEED + repeat)
    base = {"data": table.name, "repeat": repeat}
    rows = []
    if table.true_log_density is not None:
        rows.append({**base, "contender": "true density",
                     "log_likelihood_nats": float(table.true_log_density(x_test).mean()),
                     "roc_auc": _auc(-table.true_log_density(x_test), -table.true_log_density(x_out)),
                     "fit_seconds": 0.0, "note": "exact"})
    for contender in contenders:
        start = time.perf_counter()
        scorer = contender.fit(x_train, repeat)
        seconds = time.perf_counter() - start
        ll = None if scorer.log_density is None else float(scorer.log_density(x_test).mean())
        rows.append({**base, "contender": contender.name, "fit_seconds": seconds, "note": scorer.note,
                     "log_likelihood_nats": ll, "roc_auc": _auc(scorer.anomaly(x_test), scorer.anomaly(x_out))})
    return rows


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None)


def summarize(table: Table, split_rows: list[dict], reference: str = REFERENCE) -> list[dict]:
    """Per contender: the mean over the splits of the test log-likelihood and of the AUC, their standard errors
    over the splits, and the paired difference to ``reference`` (this contender minus it, split by split)."""
    x = table.x
    n_test = len(x) - int(round(TRAIN_SHARE * len(x)))
    info = {"data": table.name, "n_train": len(x) - n_test, "n_test": n_test,
            "n_outliers": max(MIN_OUTLIERS, int(round(OUTLIER_SHARE * n_test))), "n_features": x.shape[1],
            "dequantization_widths": None if table.true_log_density is not None else
            [resolution(c) for c in x.T]}
    names = list(dict.fromkeys(r["contender"] for r in split_rows))
    ref = {r["repeat"]: r["log_likelihood_nats"] for r in split_rows if r["contender"] == reference}
    out = []
    for name in names:
        mine = [r for r in split_rows if r["contender"] == name]
        row = {**info, "contender": name, "splits": len(mine),
               "note": "; ".join(dict.fromkeys(r["note"] for r in mine)),
               "fit_seconds": float(np.mean([r["fit_seconds"] for r in mine]))}
        row["roc_auc"], row["roc_auc_stderr"] = _mean_se([r["roc_auc"] for r in mine])
        row["log_likelihood_nats"] = row["log_likelihood_stderr_nats"] = None
        row["minus_reference_nats"] = row["minus_reference_stderr_nats"] = None
        if mine[0]["log_likelihood_nats"] is not None:
            row["log_likelihood_nats"], row["log_likelihood_stderr_nats"] = _mean_se(
                [r["log_likelihood_nats"] for r in mine])
            if ref and name != reference:
                row["minus_reference_nats"], row["minus_reference_stderr_nats"] = _mean_se(
                    [r["log_likelihood_nats"] - ref[r["repeat"]] for r in mine])
        out.append(row)
    return out


def _line(row: dict) -> str:
    def pm(value, se, fmt):
        return "" if value is None else format(value, fmt) + ("" if se is None else " ± " + format(se, ".3f"))

    return (f"{row['data']:18s} {row['contender']:24s} "
            f"{pm(row['log_likelihood_nats'], row['log_likelihood_stderr_nats'], '.3f'):>20s} "
            f"{pm(row['minus_reference_nats'], row['minus_reference_stderr_nats'], '+.3f'):>18s} "
            f"{pm(row['roc_auc'], row['roc_auc_stderr'], '.3f'):>14s} {row['fit_seconds']:6.1f} s   {row['note']}")


_JOBS: list[tuple] = []
"""The (table, contenders, split) jobs of :func:`run`: the worker processes inherit them (fork) and get an index,
since a table's exact density is a closure that does not pickle."""


def _split_job(index: int) -> list[dict]:
    table, contenders, repeat = _JOBS[index]
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        return evaluate_split(table, contenders, repeat)


def run(tables: list[Table], contenders=tuple(CONTENDERS), repeats: int = 5, say=print,
        workers: int = 1) -> tuple[list, list]:
    """(summary rows, per-split rows); ``say`` gets the table line by line. ``workers`` > 1: the (table, split)
    pairs in that many processes (each on one thread; the figures do not depend on it)."""
    say(f"{'data':18s} {'contender':24s} {'log p(x) nats/example':>20s} {'minus ' + REFERENCE:>18s} "
        f"{'ROC-AUC':>14s}  fit time")
    _JOBS[:] = [(table, list(contenders), repeat) for table in tables for repeat in range(repeats)]
    order = sorted(range(len(_JOBS)), key=lambda i: -_JOBS[i][0].x.size)  # the largest tables first
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            by_job = dict(zip(order, pool.map(_split_job, order, chunksize=1), strict=True))
    else:
        by_job = {i: _split_job(i) for i in order}
    results = [by_job[i] for i in range(len(_JOBS))]
    summary, splits = [], []
    for table in tables:
        rows = [r for result in results for r in result if r["data"] == table.name]
        splits += rows
        for row in summarize(table, rows):
            summary.append(row)
            say(_line(row))
    return summary, splits


CLASSICAL = ("GaussianMixture (BIC)", "GaussianMixture (valid)", "KernelDensity (CV)")


def markdown(rows: list[dict]) -> str:
    """The page's two tables from the summary rows: every contender on every set (the best log-likelihood and AUC
    of each set in bold, the exact density aside), and one line per set: the defaults against the best of
    bayesvae's own rows and the best classical density."""
    def pm(value, se, fmt):
        return "" if value is None else f"{value:{fmt}}" + ("" if se is None else f" ± {se:{fmt}}")

    out = ["| data (train / test rows, features) | contender | log p(x), nats per example | minus bayesvae defaults, "
           "nats | ROC-AUC | chosen on each split | fit, s |", "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    summary = ["| data | bayesvae defaults | best of bayesvae's own | defaults minus it | best classical | "
               "defaults minus it | AUC: best bayesvae | IsolationForest |",
               "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: |"]
    for data in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == data]
        fitted = [r for r in mine if r["contender"] != "true density"]
        best_ll = max(round(r["log_likelihood_nats"], 2) for r in fitted if r["log_likelihood_nats"] is not None)
        best_auc = max(round(r["roc_auc"], 3) for r in fitted)
        for i, r in enumerate(mine):
            head = f"{data} ({r['n_train']} / {r['n_test']}, {r['n_features']})" if i == 0 else ""
            ll = pm(r["log_likelihood_nats"], r["log_likelihood_stderr_nats"], ".2f")
            if ll and r["contender"] != "true density" and round(r["log_likelihood_nats"], 2) == best_ll:
                ll = f"**{ll}**"
            auc = pm(r["roc_auc"], r["roc_auc_stderr"], ".3f")
            if r["contender"] != "true density" and round(r["roc_auc"], 3) == best_auc:
                auc = f"**{auc}**"
            diff = "" if r["minus_reference_nats"] is None else (
                f"{r['minus_reference_nats']:+.2f}" + ("" if r["minus_reference_stderr_nats"] is None
                                                       else f" ± {r['minus_reference_stderr_nats']:.2f}"))
            out.append(f"| {head} | {r['contender']} | {ll} | {diff} | {auc} | {r['note']} | "
                       f"{r['fit_seconds']:.1f} |")
        by = {r["contender"]: r for r in mine}
        ref = by[REFERENCE]
        own = max((r for r in mine if r["contender"].startswith("bayesvae")), key=lambda r: r["log_likelihood_nats"])
        classical = max((by[c] for c in CLASSICAL if c in by), key=lambda r: r["log_likelihood_nats"])
        auc_own = max((r for r in mine if r["contender"].startswith("bayesvae")), key=lambda r: r["roc_auc"])
        name = lambda r: r["contender"].removeprefix("bayesvae ")  # noqa: E731
        forest = "" if "IsolationForest" not in by else f"{by['IsolationForest']['roc_auc']:.3f}"
        summary.append(
            f"| {data} | {ref['log_likelihood_nats']:.2f} | {name(own)}: {own['log_likelihood_nats']:.2f} | "
            f"{ref['log_likelihood_nats'] - own['log_likelihood_nats']:+.2f} | {classical['contender']}: "
            f"{classical['log_likelihood_nats']:.2f} | "
            f"{ref['log_likelihood_nats'] - classical['log_likelihood_nats']:+.2f} | "
            f"{name(auc_own)}: {auc_own['roc_auc']:.3f} | {forest} |")
    return "\n".join(out) + "\n\n" + "\n".join(summary) + "\n"


#: The tables of the comparison: scikit-learn's five and three synthetic sets of known density.
def benchmark_tables(extra: bool = False) -> list[Table]:
    tables = [Table(name, _sklearn_table(name)) for name in TABLES]
    tables += [two_moons(1000), curved_manifold(1000), gaussian_mixture(1000)]
    return tables + ([correlated_gaussian(), funnel()] if extra else [])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="two small tables, tiny settings (seconds)")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only these data sets (repeatable)")
    ap.add_argument("--repeats", type=int, default=3, help="splits (seeds 0, 1, ...) per data set")
    ap.add_argument("--workers", type=int, default=1, help="processes, one (table, split) each")
    ap.add_argument("--extra", action="store_true", help="also gaussian-8d and funnel-6d (the earlier table's)")
    ap.add_argument("--json")
    ap.add_argument("--markdown", metavar="FILE", help="also write the page's two tables (docs/benchmarks-tabular.md)")
    args = ap.parse_args(argv)
    info = machine.describe()
    print(machine.line(info), flush=True)
    start = time.perf_counter()
    tables = benchmark_tables(args.extra)
    contenders = CONTENDERS
    if args.smoke:
        args.repeats = 2
        tables = [Table("iris", _sklearn_table("iris")), correlated_gaussian(n=300, dim=3)]
        contenders = [Contender(REFERENCE, partial(fit_vae, hidden=(8,), max_iter=3, n_importance_samples=16)),
                      Contender("bayesvae gaussian-learned", partial(fit_vae, likelihood="gaussian-learned",
                                                                     hidden=(8,), max_iter=3,
                                                                     n_importance_samples=16)),
                      Contender("bayesvae --select", partial(fit_vae_select, max_iter=2, n_importance_samples=16)),
                      Contender("GaussianMixture (BIC)", partial(fit_gaussian_mixture, max_components=2)),
                      Contender("GaussianMixture (valid)", partial(fit_gaussian_mixture_validation,
                                                                   max_components=2)),
                      Contender("KernelDensity (CV)", partial(fit_kernel_density, bandwidths=(0.3, 1.0))),
                      Contender("IsolationForest", fit_isolation_forest)]
    if args.only:
        tables = [t for t in tables if t.name in args.only]
    rows, split_rows = run(tables, contenders, args.repeats, say=lambda line: print(line, flush=True),
                           workers=args.workers)
    minutes = (time.perf_counter() - start) / 60
    print(f"total {minutes:.1f} min", flush=True)
    result = {"rows": rows, "splits": split_rows, "repeats": args.repeats, "reference": REFERENCE,
              "protocol": {"train_share": TRAIN_SHARE, "split_seed": SPLIT_SEED, "noise_seed": NOISE_SEED,
                           "outlier_seed": OUTLIER_SEED, "outlier_share": OUTLIER_SHARE, "min_outliers": MIN_OUTLIERS,
                           "valid_share": VALID_SHARE},
              "minutes": minutes, "smoke": args.smoke, "workers": args.workers, "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "machine": info}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows))
    return result


if __name__ == "__main__":
    main()
