"""scikit-learn estimators: a VAE as a density of tabular data (:class:`VAEDensity`) and an outlier detector on top
of it (:class:`VAEOutlierDetector`), for ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``.

Both are thin: ``fit`` hands the table to :func:`bayesvae.runs.train` (the loader's standardisation, its refusal of
constant columns, the data-dependent start of a learned σ, the trainer) and ``score_samples`` to
:func:`bayesvae.estimate_log_likelihood`. The standardisation x' = (x - m) / s is part of the model, so every
log-density is that of x in the units of ``X`` (the Jacobian -Σ_j ln s_j included): rescaling X by c shifts
``score_samples`` by -d ln c.

An example's score depends on the example alone, never on its row or on the other rows of the call: its K
importance samples are common random numbers (``seeding="common"``: the same noise for every example, drawn from a
seed fixed at ``fit``), and each example is scored on its own, so no matrix product mixes rows.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, OutlierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import data as bdata
from . import runs
from .config import TrainConfig
from .errors import ConfigError, DataValidationError
from .estimators import estimate_log_likelihood, eval_mode
from .model import VAE
from .selection import KeepBest, candidates, select
from .sizing import table_defaults
from .training import Trainer

__all__ = ["VAEDensity", "VAEOutlierDetector"]

#: The decoders that give a table a density (a Bernoulli decoder is for 0/1 data, which standardisation removes).
TABULAR_LIKELIHOODS = ("gaussian-learned", "gaussian-shared", "gaussian-fixed", "gaussian-lowrank", "student-t")
#: Rows a fit needs: one to train on, one to validate on, and the loader's minimum of three.
MIN_SAMPLES = 3


# (numbers.Integral and numbers.Real carry no comparison types: ``cast`` tells mypy they compare as int and float.)
def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and cast(int, value) > 0


def _fraction(value: object, *, zero: bool) -> bool:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    v = cast(float, value)
    return ok and (0 <= v if zero else 0 < v) and v < 1


#: Each constructor argument, what it must be, and the test: one table from which every refusal is derived.
def _auto(test):
    """The test, or the value "auto" (chosen at ``fit`` from the rows and columns: :mod:`bayesvae.sizing`)."""
    return lambda v: _is_auto(v) or (not isinstance(v, str) and test(v))


def _is_auto(value: object) -> bool:
    return isinstance(value, str) and value == "auto"


PARAMETER_RULES = {
    "latent_dim": ("'auto' or a positive integer", _auto(_positive_int)),
    "hidden": ("'auto' or a tuple of positive integers (the encoder's layer widths)",
               _auto(lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_positive_int(h) for h in v))),
    "activation": ("'relu', 'tanh' or 'elu'", lambda v: v in ("relu", "tanh", "elu")),
    "likelihood": (f"one of {list(TABULAR_LIKELIHOODS)}", lambda v: v in TABULAR_LIKELIHOODS),
    "likelihood_options": ("None or a dict of the likelihood's options", lambda v: v is None or isinstance(v, dict)),
    "max_iter": ("'auto' or a positive integer (epochs)", _auto(_positive_int)),
    "batch_size": ("'auto' or a positive integer", _auto(_positive_int)),
    "learning_rate": ("a positive finite number",
                      lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
                      and 0 < cast(float, v) < math.inf),
    "validation_fraction": ("a number in [0, 1)", lambda v: _fraction(v, zero=True)),
    "n_iter_no_change": ("'auto', None or a positive integer (epochs)", _auto(lambda v: v is None or _positive_int(v))),
    "objective": ("'auto', 'elbo' or 'iwae'", lambda v: v in ("auto", "elbo", "iwae")),
    "train_samples": ("'auto' or a positive integer (K samples of z per row in training)", _auto(_positive_int)),
    "select": ("True or False", lambda v: isinstance(v, bool)),
    "n_importance_samples": ("a positive integer (K)", _positive_int),
    "device": ("a device name such as 'cpu' or 'cuda'", lambda v: isinstance(v, (str, torch.device))),
    "contamination": ("a number in (0, 0.5]", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
                      and 0 < cast(float, v) <= 0.5),
}
#: The parameters that "auto" leaves to the table's rule, by the rule's name of the setting (bayesvae.sizing).
AUTO_PARAMETERS = {"hidden": "hidden", "latent_dim": "latent_dim", "batch_size": "batch_size", "epochs": "max_iter",
                   "patience": "n_iter_no_change", "objective": "objective", "samples": "train_samples"}


@dataclass(frozen=True)
class _TableSpec(runs.DataSpec):
    """A DataSpec whose data are an in-memory table (the rows of ``X``), split and standardised by the loader."""

    table: np.ndarray | None = field(default=None, compare=False, repr=False)
    feature_names: tuple[str, ...] | None = field(default=None, compare=False)

    def load(self, vocabulary: object = None) -> bdata.Dataset:  # (a vocabulary is for text, never for a table)
        return bdata._assemble("X", "X", {"x": self.table}, {}, False, seed=self.seed,
                               valid_fraction=self.valid_fraction, test_fraction=0.0, standardize=True, limit=None,
                               feature_names=self.feature_names)


class _TabularVAE(BaseEstimator):
    """What both estimators share: ``fit`` through :func:`bayesvae.runs.train`, ``score_samples``, ``encode``."""

    def _check_parameters(self) -> None:
        for name, value in self.get_params(deep=False).items():
            if name in PARAMETER_RULES and not PARAMETER_RULES[name][1](value):
                raise ConfigError(f"{type(self).__name__}({name}={value!r}): {name} must be "
                                  f"{PARAMETER_RULES[name][0]}")
        runs.check_likelihood_options(self.likelihood, dict(self.likelihood_options or {}))

    def _validate(self, X, *, reset: bool) -> np.ndarray:
        """``X`` as a float64 array [n, d] (sklearn's checks: finite, 2-D, feature names); refusals name X."""
        try:
            return validate_data(self, X, reset=reset, dtype=np.float64,
                                 ensure_min_samples=MIN_SAMPLES if reset else 1)
        except ValueError as err:
            if isinstance(err, DataValidationError):
                raise
            raise DataValidationError(f"X: {err}") from None

    def fit(self, X, y=None):
        """Train the VAE on the rows of ``X`` [n_samples, n_features] (``y`` is ignored).

        A ``validation_fraction`` of the rows (chosen with ``random_state``) is held out: training stops after
        ``n_iter_no_change`` epochs without a better validation loss and the fitted weights are those of the best
        epoch. The features are standardised with the training rows' mean and standard deviation (``mean_``,
        ``scale_``); a constant column is refused (it has no density).
        """
        self._check_parameters()
        X = self._validate(X, reset=True)
        rng = check_random_state(self.random_state)
        train_seed, split_seed, score_seed = (int(s) for s in rng.randint(0, np.iinfo(np.int32).max, size=3))
        names = None if getattr(self, "feature_names_in_", None) is None else tuple(map(str, self.feature_names_in_))
        spec = _TableSpec("X", seed=split_seed, valid_fraction=float(self.validation_fraction), test_fraction=0.0,
                          table=X, feature_names=names)
        auto = {setting for setting, name in AUTO_PARAMETERS.items() if _is_auto(getattr(self, name))}

        def given(name: str, placeholder):  # what runs.train gets; the table's rule replaces the "auto" ones
            value = getattr(self, name)
            return placeholder if _is_auto(value) else value

        config = TrainConfig(epochs=int(given("max_iter", 1)), batch_size=int(given("batch_size", 1)),
                             learning_rate=float(self.learning_rate), seed=train_seed,
                             early_stopping_patience=int(given("n_iter_no_change", 0) or 0),
                             objective=str(given("objective", "elbo")), samples=int(given("train_samples", 1)))

        def train(hidden, latent_dim, sized=frozenset(auto)) -> tuple[VAE, Trainer]:
            keep = KeepBest()
            with torch.random.fork_rng(devices=[]):  # training seeds torch's generator; the caller's is restored
                trainer = runs.train(spec, out=None, train_config=config, likelihood=self.likelihood,
                                     likelihood_options=dict(self.likelihood_options or {}),
                                     latent_dim=int(latent_dim), hidden=tuple(int(h) for h in hidden),
                                     activation=self.activation, callbacks=[keep], device=self.device,
                                     table_sizes=sized)
            keep.restore(trainer.model)
            return cast(VAE, trainer.model), trainer

        if self.select:
            model, trainer = self._select(spec, auto, train)
        else:
            model, trainer = train(given("hidden", (64,)), given("latent_dim", 2))
        model.eval()
        mean, scale = trainer.run_state["data"]["standardization"]
        self.model_ = model
        self.mean_, self.scale_ = np.asarray(mean, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        self.hidden_, self.latent_dim_ = tuple(trainer.run_state["model_config"]["hidden"]), int(model.latent_dim)
        self.max_iter_, self.batch_size_ = int(trainer.config.epochs), int(trainer.config.batch_size)
        self.n_iter_no_change_ = int(trainer.config.early_stopping_patience) or None
        self.objective_, self.train_samples_ = str(trainer.config.objective), int(trainer.config.samples)
        history = trainer.state.history
        self.n_iter_ = int(trainer.state.epoch)
        self.loss_curve_ = [float(r["train_loss"]) for r in history]
        self.validation_loss_curve_ = [float(r["valid_loss"]) for r in history if "valid_loss" in r]
        self._score_seed = score_seed
        return self

    def _select(self, spec, auto, train) -> tuple[VAE, Trainer]:
        """``select=True``: every candidate of :func:`bayesvae.selection.candidates` trained on the same split and
        scored on its validation rows; the best is kept, every figure is in ``selection_``."""
        if not {"hidden", "latent_dim"} <= auto:
            raise ConfigError(f"{type(self).__name__}(select=True) chooses hidden and latent_dim on the validation "
                              "rows; leave them 'auto' (or set select=False)")
        dataset = spec.load()
        if len(dataset.valid) == 0:
            raise ConfigError(f"{type(self).__name__}(select=True) chooses on the validation rows: give "
                              f"validation_fraction > 0 (here {len(dataset.train)} rows are all for training)")
        grid = candidates(table_defaults(len(dataset.train), dataset.event_shape[0]))
        fitted: list[tuple[VAE, Trainer]] = []

        def fit(candidate):  # the candidate's sizes, the rule's for the rest
            fitted.append(train(candidate.hidden, candidate.latent_dim, frozenset(auto - {"hidden", "latent_dim"})))
            return fitted[-1]

        best, self.selection_ = select(fit, grid)
        return fitted[best]

    def _standardized(self, X) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = self._validate(X, reset=False)
        z = ((X - self.mean_) / self.scale_).astype(np.float32)
        if not np.isfinite(z).all():
            raise DataValidationError("X: a value is too large to standardise in float32 (|x - mean_| / scale_ "
                                      "above 3.4e38)")
        return torch.from_numpy(z)

    def score_samples(self, X) -> np.ndarray:
        """log p(x) of each row, float64 [n_samples], in nats, for x in the units of ``X``: the importance-sampled
        estimate (:func:`bayesvae.estimate_log_likelihood`, K = ``n_importance_samples``, each row with the same
        common random numbers), including the standardisation's Jacobian -Σ_j ln ``scale_[j]``. Higher is more
        typical. The estimate is a stochastic lower bound in expectation (Jensen); it tightens as K grows."""
        x = self._standardized(X)
        ll = estimate_log_likelihood(self.model_, x, int(self.n_importance_samples), batch_size=1,
                                     seed=self._score_seed, seeding="common")
        return ll.numpy()

    def encode(self, X) -> np.ndarray:
        """Posterior means E[z|x] of each row, float64 [n_samples, latent_dim]."""
        x = self._standardized(X)
        with eval_mode(self.model_), torch.no_grad():
            return self.model_.encode(x.to(next(self.model_.parameters()).device)).double().cpu().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # random_state fixes every draw (training, scoring, sampling)
        return tags


class VAEDensity(DensityMixin, _TabularVAE):
    """A variational autoencoder as a density estimator of tabular data, in scikit-learn's interface.

    ``fit(X)`` standardises the features and trains a VAE with a Student-t decoder (``likelihood``; learned
    location, scale and degrees of freedom per feature) by maximising the IWAE bound with K = 8 samples of z per
    row (``objective``, ``train_samples``; ``objective="elbo"`` for the ELBO) with Adam
    (:func:`bayesvae.runs.train`). ``score_samples(X)`` is the importance-sampled log p(x) per row in nats, in
    the units of ``X``; ``score(X)`` is its MEAN over the rows (the convention of
    :class:`sklearn.mixture.GaussianMixture`; :class:`sklearn.neighbors.KernelDensity` returns the sum), so higher
    is better and ``GridSearchCV`` maximises the held-out log-likelihood per example.

    Args:
        latent_dim: d, the size of the latent code.
        hidden: the MLP encoder's hidden widths (the decoder mirrors them).
        activation: ``relu``, ``tanh`` or ``elu``.
        likelihood: ``student-t`` (the default: heavy tails, learned degrees of freedom), ``gaussian-learned``
            (σ per feature), ``gaussian-lowrank`` (covariance W Wᵀ + diag σ² given z,
            ``likelihood_options={"rank": r}``), ``gaussian-shared`` or ``gaussian-fixed``
            (``likelihood_options={"sigma": s}``, on the standardised scale).
        max_iter: the most epochs to train.
        batch_size, learning_rate: Adam's minibatch size and step size.
        validation_fraction: the share of rows held out for early stopping and the choice of the best epoch (0:
            none; the training loss then chooses).
        n_iter_no_change: stop after this many epochs without improvement (None: train ``max_iter`` epochs).
        objective: the bound maximised in training, ``elbo`` (eq. 24) or ``iwae`` (Burda et al. 2016; tighter,
            the better density), with ``train_samples`` samples of z per row.
        "auto" (the default of the sizes above, ``objective`` and ``train_samples``): chosen at ``fit`` from the
            training rows and columns by :func:`bayesvae.sizing.table_defaults` (the rule and the measurement that
            chose it: docs/tabular-defaults.md); the values used are the attributes ``latent_dim_``, ``hidden_``,
            ``max_iter_``, ``batch_size_``, ``n_iter_no_change_``, ``objective_``, ``train_samples_``.
        select: train the small grid of widths and latent dimensions of :func:`bayesvae.selection.candidates`
            around the rule's and keep the best by the validation rows' log-likelihood (``hidden`` and
            ``latent_dim`` must be "auto"; every candidate's figure is in ``selection_``).
        n_importance_samples: K, the importance samples of each row's log p(x).
        random_state: the seed of the split, the weights, the minibatches, the scoring draws (an int makes
            ``fit`` and every method reproducible; a ``RandomState`` is consumed; None draws fresh seeds).
        device: where the network runs (``cpu``, ``cuda``, ...).

    Attributes:
        model_: the trained :class:`bayesvae.VAE` (on the standardised scale, holding ln ``scale_``).
        mean_, scale_: the standardisation, float64 [n_features].
        n_features_in_, feature_names_in_: as everywhere in scikit-learn (the names only for a DataFrame).
        n_iter_: epochs trained.
        loss_curve_: the training loss of each epoch (minus the bound of ``objective_``, nats per example).
        validation_loss_curve_: the same on the held-out rows.
        latent_dim_, hidden_, max_iter_, batch_size_, n_iter_no_change_: the sizes used (chosen or given).
        objective_, train_samples_: the training objective and its K used (chosen or given).
        selection_: with ``select=True``, one dict per candidate: ``hidden``, ``latent_dim``,
            ``valid_log_likelihood_nats`` (mean over the validation rows, K = 200), ``epochs``.
    """

    def __init__(self, latent_dim: int | str = "auto", hidden: tuple[int, ...] | str = "auto",
                 activation: str = "relu", likelihood: str = bdata.TABLE_LIKELIHOOD,
                 likelihood_options: dict | None = None, max_iter: int | str = "auto", batch_size: int | str = "auto",
                 learning_rate: float = 1e-3, validation_fraction: float = 0.15,
                 n_iter_no_change: int | None | str = "auto", objective: str = "auto",
                 train_samples: int | str = "auto", select: bool = False, n_importance_samples: int = 1000,
                 random_state=None, device: str = "cpu"):
        self.latent_dim, self.hidden, self.activation = latent_dim, hidden, activation
        self.likelihood, self.likelihood_options = likelihood, likelihood_options
        self.max_iter, self.batch_size, self.learning_rate = max_iter, batch_size, learning_rate
        self.validation_fraction, self.n_iter_no_change, self.select = validation_fraction, n_iter_no_change, select
        self.objective, self.train_samples = objective, train_samples
        self.n_importance_samples, self.random_state, self.device = n_importance_samples, random_state, device

    def score(self, X, y=None) -> float:
        """The mean of :meth:`score_samples` over the rows: log-likelihood per example, nats (``y`` is ignored).
        GaussianMixture's convention; KernelDensity's ``score`` is the sum."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """``n_samples`` draws x ~ q(x) = ∫ q(x|z) q(z) dz in the units of ``X``, float64 [n_samples, n_features]:
        z from the prior, then x from the decoder's distribution (not its mean). ``random_state`` seeds the draws
        (None: fresh ones); torch's global generator is left as it was."""
        check_is_fitted(self, "model_")
        if not _positive_int(n_samples):
            raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
        seed = int(check_random_state(random_state).randint(0, np.iinfo(np.int32).max))
        device = next(self.model_.parameters()).device
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), torch.no_grad():
            torch.manual_seed(seed)
            x = self.model_.sample(int(n_samples), mean=False).double().cpu().numpy()
        return x * self.scale_ + self.mean_


class VAEOutlierDetector(OutlierMixin, _TabularVAE):
    """Outliers are the rows of low density under a :class:`VAEDensity`-style model, in scikit-learn's convention
    (that of ``IsolationForest`` and ``LocalOutlierFactor``): ``score_samples`` is log p(x) (higher: more normal),
    ``offset_`` its ``contamination`` quantile on the training rows, ``decision_function = score_samples -
    offset_`` (negative: outlier), ``predict`` +1 for inliers and -1 for outliers.

    Args:
        contamination: the expected share of outliers in the training data, in (0, 0.5]: it sets ``offset_``.
        The others: as :class:`VAEDensity`.

    Attributes:
        offset_: the threshold on log p(x) (nats, units of X). The others: as :class:`VAEDensity`. The training rows'
        scores are a little optimistic (the model saw them), so on new data somewhat more than ``contamination``
        of the inliers may fall below ``offset_``.
    """

    def __init__(self, contamination: float = 0.1, latent_dim: int | str = "auto",
                 hidden: tuple[int, ...] | str = "auto", activation: str = "relu",
                 likelihood: str = bdata.TABLE_LIKELIHOOD, likelihood_options: dict | None = None,
                 max_iter: int | str = "auto", batch_size: int | str = "auto", learning_rate: float = 1e-3,
                 validation_fraction: float = 0.15, n_iter_no_change: int | None | str = "auto",
                 objective: str = "auto", train_samples: int | str = "auto", select: bool = False,
                 n_importance_samples: int = 1000, random_state=None, device: str = "cpu"):
        self.contamination = contamination
        self.latent_dim, self.hidden, self.activation = latent_dim, hidden, activation
        self.likelihood, self.likelihood_options = likelihood, likelihood_options
        self.max_iter, self.batch_size, self.learning_rate = max_iter, batch_size, learning_rate
        self.validation_fraction, self.n_iter_no_change, self.select = validation_fraction, n_iter_no_change, select
        self.objective, self.train_samples = objective, train_samples
        self.n_importance_samples, self.random_state, self.device = n_importance_samples, random_state, device

    def fit(self, X, y=None):
        """Fit the density (see :meth:`VAEDensity.fit`), then set ``offset_`` to the ``contamination`` quantile of
        the training rows' log p(x)."""
        super().fit(X, y)
        self.offset_ = float(np.percentile(self.score_samples(X), 100.0 * self.contamination))
        return self

    def decision_function(self, X) -> np.ndarray:
        """log p(x) - ``offset_`` per row (nats): negative for outliers, positive for inliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for an inlier (decision_function ≥ 0), -1 for an outlier, int [n_samples]."""
        return np.where(self.decision_function(X) < 0, -1, 1)
