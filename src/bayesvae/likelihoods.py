"""Decoders' distributions q(x|z): eqs. (18)-(22) of the seed text.

A likelihood is a small head that turns the decoder network's raw output into a ``torch.distributions`` object
over the data dimensions. It states how many decoder outputs it needs per data dimension (``num_params``), so the
decoder is sized from it and nothing else in the code branches on the kind of likelihood.

Parameters arrive as one tensor ``[N, m*C, *rest]`` (or ``[N, m*D]`` for flat data): the ``m`` parameter blocks are
stacked along the first event dimension. Every value of ``log_prob`` keeps all constants, so it is a true
log-density (continuous data) or log-probability (binary data), in nats.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributions import Bernoulli as _TorchBernoulli
from torch.distributions import Distribution, Independent, LowRankMultivariateNormal, Normal, StudentT, constraints
from torch.types import _size

from .errors import ConfigError

__all__ = [
    "Likelihood",
    "Bernoulli",
    "GaussianFixedVariance",
    "GaussianLearnedVariance",
    "GaussianSharedVariance",
    "GaussianLowRank",
    "StudentTLearnedScale",
    "LIKELIHOODS",
    "make_likelihood",
    "batch_fitting",
    "ScaledDensity",
]


def _split(params: torch.Tensor, m: int, event_ndim: int) -> tuple[torch.Tensor, ...]:
    """Split ``params`` into ``m`` equal blocks along the first event dimension."""
    dim = params.dim() - event_ndim
    if params.shape[dim] % m:
        raise ValueError(
            f"decoder output has {params.shape[dim]} channels along dim {dim}, not a multiple of {m}; "
            f"size the decoder with likelihood.num_params"
        )
    return params.chunk(m, dim=dim) if m > 1 else (params,)


class Likelihood(nn.Module):
    """Contract: ``num_params`` outputs per data dimension; ``forward(params, event_ndim)`` -> Distribution.

    The returned distribution has ``batch_shape = params.shape[:-event_ndim]`` and
    ``event_shape = params.shape[-event_ndim:]`` with the first event dimension divided by ``num_params``.
    """

    num_params: int = 1
    name: str = "likelihood"
    support: constraints.Constraint = constraints.real
    """The values x may take (the support of the distributions ``forward`` returns; the public bounds refuse data
    off it, as ``torch.distributions`` does with ``validate_args``)."""
    support_text: str = "the real numbers"
    support_hint: str = ""
    """What to do with data off the support."""
    data: str = "values"
    """What the distribution is over: ``values`` (real or 0/1 arrays from a decoder's output) or ``tokens`` (id
    rows of the text data source, with the recurrent model of ``architecture="rnn"``)."""

    def forward(self, params: torch.Tensor, event_ndim: int = 1) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def mean(self, params: torch.Tensor, event_ndim: int = 1) -> torch.Tensor:
        """E[x|z], what ``reconstruct`` and image plots show."""
        dist: Distribution = self(params, event_ndim)
        return dist.mean

    def config(self) -> dict:
        """JSON-able constructor arguments (checkpoints rebuild the head from them)."""
        return {"name": self.name}

    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Set data-dependent starting values from training examples ``x`` (a fresh run calls it once, before the
        first step); nothing for heads without any."""


class Bernoulli(Likelihood):
    """Eq. (19): -ln q(x|z) = Σ_k BCE(x_k, sigmoid(logit_k)), computed from logits (exact and stable).

    For binary data only: grey levels must be binarised first (``bayesvae.data.binarize``).
    """

    name = "bernoulli"
    support = constraints.boolean
    support_text = "{0, 1}"
    support_hint = ("binarise grey levels first (bayesvae.data.binarize: a draw x ~ Bernoulli(pixel)), or use a "
                    "Gaussian likelihood")

    def forward(self, params: torch.Tensor, event_ndim: int = 1) -> Distribution:
        return Independent(_TorchBernoulli(logits=params, validate_args=False), event_ndim, validate_args=False)

    def mean(self, params: torch.Tensor, event_ndim: int = 1) -> torch.Tensor:
        return torch.sigmoid(params)


class GaussianFixedVariance(Likelihood):
    """Eq. (22) with its constant: -ln q(x|z) = ||x - μ||²/(2σ²) + D ln σ + (D/2) ln 2π, σ given by the user.

    σ sets the balance between reconstruction and KL ("MSE or cross-entropy?" is a choice of likelihood).
    """

    name = "gaussian-fixed"

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        sigma = float(sigma)
        if not (sigma > 0.0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number, got {sigma}; try sigma=0.1 for data in [0, 1]")
        self.sigma = sigma

    def forward(self, params: torch.Tensor, event_ndim: int = 1) -> Distribution:
        scale = torch.full((), self.sigma, dtype=params.dtype, device=params.device).expand_as(params)
        return Independent(Normal(params, scale, validate_args=False), event_ndim, validate_args=False)

    def mean(self, params: torch.Tensor, event_ndim: int = 1) -> torch.Tensor:
        return params

    def config(self) -> dict:
        return {"name": self.name, "sigma": self.sigma}


class GaussianLearnedVariance(Likelihood):
    """Eq. (21): mean and per-dimension σ from the decoder (twice the outputs), σ = floor + softplus(raw).

    The floor keeps the density bounded: without it a dimension that the decoder predicts exactly drives
    ln σ to -inf and the loss to -inf.
    """

    name = "gaussian-learned"
    num_params = 2
    sigma_offset: torch.Tensor  # a buffer

    def __init__(self, min_sigma: float = 1e-3):
        super().__init__()
        min_sigma = float(min_sigma)
        if not (min_sigma > 0.0 and math.isfinite(min_sigma)):
            raise ValueError(f"min_sigma must be a positive finite number, got {min_sigma}")
        self.min_sigma = min_sigma
        # σ = floor + softplus(raw + offset): the offset starts σ at the data's spread (initialize_from_data)
        self.register_buffer("sigma_offset", torch.tensor(0.0))

    def forward(self, params: torch.Tensor, event_ndim: int = 1) -> Distribution:
        loc, raw = _split(params, 2, event_ndim)
        scale = nn.functional.softplus(raw + self.sigma_offset.to(raw.dtype)) + self.min_sigma
        return Independent(Normal(loc, scale, validate_args=False), event_ndim, validate_args=False)

    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Start σ (at a decoder output of 0) at the standard deviation of the training values, not at
        softplus(0) = 0.69 whatever the data's scale."""
        target = max(float(x.float().std()) - self.min_sigma, 1e-4)
        with torch.no_grad():
            self.sigma_offset.fill_(target + math.log(-math.expm1(-target)))  # softplus⁻¹(target)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        state_dict.setdefault(prefix + "sigma_offset", torch.tensor(0.0))  # checkpoints from before the offset
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def mean(self, params: torch.Tensor, event_ndim: int = 1) -> torch.Tensor:
        return _split(params, 2, event_ndim)[0]

    def config(self) -> dict:
        return {"name": self.name, "min_sigma": self.min_sigma}


class _SharedScaleNormal(Distribution):
    """Normal(loc, σ) with one σ for all dimensions, asked of its owner when ``log_prob`` is called.

    For the closed-form variant fitted to a training batch, σ² = mean((x - μ)²) over every element of the call
    maximises the Gaussian log-likelihood (the "σ-VAE" optimum). It is detached: at the optimum its gradient is
    zero anyway.
    """

    arg_constraints = {"loc": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: torch.Tensor, event_ndim: int, owner: GaussianSharedVariance):
        self.loc, self._owner, self._event_ndim = loc, owner, event_ndim
        super().__init__(loc.shape[: loc.dim() - event_ndim], loc.shape[loc.dim() - event_ndim :], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def _normal(self, log_sigma: torch.Tensor) -> Distribution:
        scale = log_sigma.to(self.loc.dtype).exp().expand_as(self.loc)
        return Independent(Normal(self.loc, scale, validate_args=False), self._event_ndim, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._normal(self._owner.current_log_sigma(value, self.loc)).log_prob(value)

    def rsample(self, sample_shape: _size = torch.Size()) -> torch.Tensor:
        return self._normal(self._owner.scoring_log_sigma().detach()).rsample(sample_shape)


class BatchFitted:
    """A module with statistics fitted to batches by the training objective alone: within :meth:`fitting` (entered
    by :func:`batch_fitting`, which the training objective calls on a model in training mode) ``fit_to_batch`` is
    set; everything else, every bound and estimator included, uses the running statistics."""

    fit_to_batch: bool = False

    @contextlib.contextmanager
    def fitting(self, enabled: bool = True) -> Iterator[None]:
        saved, self.fit_to_batch = self.fit_to_batch, bool(enabled)
        try:
            yield
        finally:
            self.fit_to_batch = saved


class GaussianSharedVariance(BatchFitted, Likelihood):
    """Gaussian with one σ shared by every dimension: learned (a parameter), or set to its closed-form optimum.

    With ``optimal=True``, σ is a statistic of the training data, not a parameter. Only the training objective
    fits it: inside :meth:`fitting` (which ``TrainingObjective`` enters on a model in training mode) ``log_prob``
    uses σ² = the mean squared error of the batch being trained on, and the running estimate is updated: an
    exponential average of the batch MSEs with Adam-style bias correction, σ²_run = avg / (1 - (1 - m)^n) after n
    updates, so a short run does not report a σ dragged towards ``init_sigma``. Everywhere else (evaluation, the
    ELBO and IWAE bounds called by a user, in training or eval mode) ``log_prob`` uses the running σ and changes
    nothing, so a reported bound is a bound and does not depend on the other examples of the batch. The trainer
    restores every buffer when it skips a step, so a non-finite batch never reaches the running estimate.

    The default momentum, 0.5, follows the model closely: the running σ should be the optimum of the current
    decoder, not of the last hundred steps, and one batch of B·D residuals already fixes σ to about 1/sqrt(2BD)
    (under 1 % for a batch of 128 digits). Measured on digits after 12 steps: running σ 0.296 against a training
    RMS of 0.284 (momentum 0.1: 0.341).
    """

    name = "gaussian-shared"
    # Buffers of the optimal-σ variant.
    log_sigma: torch.Tensor
    mse_average: torch.Tensor
    average_weight: torch.Tensor

    def __init__(self, optimal: bool = False, init_sigma: float = 1.0, min_sigma: float = 1e-3, momentum: float = 0.5):
        super().__init__()
        for key, value in (("optimal", optimal),):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")
        for key, number in (("init_sigma", init_sigma), ("min_sigma", min_sigma), ("momentum", momentum)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
                raise ValueError(f"{key} must be a finite number, got {number!r}")
        if not (init_sigma > 0 and min_sigma > 0 and 0 < momentum <= 1):
            raise ValueError("init_sigma and min_sigma must be > 0 and momentum in (0, 1]")
        self.optimal, self.min_sigma, self.momentum = bool(optimal), float(min_sigma), float(momentum)
        self.fit_to_batch = False
        start = torch.tensor(math.log(max(init_sigma, min_sigma)))
        if self.optimal:
            self.register_buffer("log_sigma", start)
            self.register_buffer("mse_average", torch.tensor(0.0))
            self.register_buffer("average_weight", torch.tensor(0.0))
        else:
            self.sigma_param = nn.Parameter(start / self.LOG_SIGMA_RATE)

    #: Learned σ: ln σ = LOG_SIGMA_RATE x the parameter. Adam moves a parameter by about its learning rate per step
    #: whatever the gradient's size, so ln σ itself would need ~1,000 steps per unit (σ from 1 to 0.1: 2,300
    #: steps; digits' 100 epochs are 1,200); the rate lets σ settle at the pace the networks learn.
    LOG_SIGMA_RATE = 10.0

    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Start σ at the standard deviation of the training values (the σ of predicting their mean), not at 1."""
        log_std = math.log(max(float(x.float().std()), self.min_sigma))
        with torch.no_grad():
            if self.optimal:
                self.log_sigma.fill_(log_std)  # used until the first step is committed
            else:
                self.sigma_param.fill_(log_std / self.LOG_SIGMA_RATE)

    def scoring_log_sigma(self) -> torch.Tensor:
        """The log σ of evaluation and sampling: the (floored) parameter, or the running optimum."""
        if not self.optimal:
            return (self.LOG_SIGMA_RATE * self.sigma_param).clamp(min=math.log(self.min_sigma))
        return self.log_sigma

    def current_log_sigma(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """The log σ used for ``log_prob(x)``: the scoring σ, or (while fitting) the batch optimum."""
        if not (self.optimal and self.fit_to_batch):
            return self.scoring_log_sigma()
        with torch.no_grad():
            mse = (x - loc).float().pow(2).mean()
            batch = 0.5 * mse.clamp(min=self.min_sigma**2).log()
            self.mse_average.mul_(1.0 - self.momentum).add_(self.momentum * mse.to(self.mse_average.dtype))
            self.average_weight.mul_(1.0 - self.momentum).add_(self.momentum)
            running = self.mse_average / self.average_weight
            self.log_sigma.copy_(0.5 * running.clamp(min=self.min_sigma**2).log())
        return batch

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        if not self.optimal and prefix + "log_sigma" in state_dict:  # checkpoints from before the rate
            state_dict[prefix + "sigma_param"] = state_dict.pop(prefix + "log_sigma") / self.LOG_SIGMA_RATE
        # Checkpoints from before the bias-corrected average hold log σ alone: take it as a fully weighted average.
        if self.optimal and prefix + "log_sigma" in state_dict and prefix + "mse_average" not in state_dict:
            log_sigma = state_dict[prefix + "log_sigma"]
            state_dict[prefix + "mse_average"] = (2.0 * log_sigma).exp()
            state_dict[prefix + "average_weight"] = torch.ones_like(log_sigma)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, params: torch.Tensor, event_ndim: int = 1) -> Distribution:
        return _SharedScaleNormal(params, event_ndim, self)

    def mean(self, params: torch.Tensor, event_ndim: int = 1) -> torch.Tensor:
        return params

    def config(self) -> dict:
        return {"name": self.name, "optimal": self.optimal, "min_sigma": self.min_sigma, "momentum": self.momentum}


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class _FlatEvent(Distribution):
    """A distribution over vectors [*batch, D] seen as events of shape ``event_shape`` (D = their product): an
    image's pixels as one vector for a low-rank covariance. ``log_prob`` and ``rsample`` reshape, nothing else."""

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, flat: Distribution, event_shape: torch.Size):
        self.flat = flat
        super().__init__(flat.batch_shape, event_shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.flat.mean.reshape(self.batch_shape + self.event_shape)

    def rsample(self, sample_shape: _size = torch.Size()) -> torch.Tensor:
        x = self.flat.rsample(sample_shape)
        return x.reshape(x.shape[:-1] + self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.flat.log_prob(value.reshape(value.shape[: value.dim() - len(self.event_shape)] + (-1,)))


class GaussianLowRank(Likelihood):
    """A Gaussian whose covariance given z is low rank plus diagonal: q(x|z) = N(μ(z), W(z) W(z)ᵀ + diag σ(z)²),
    W(z) of shape [D, r] (``rank`` r), every term from the decoder (2 + r outputs per data dimension).

    Columns of a table that are correlated given z are then expressed by W with r directions instead of spending
    latent dimensions on them. It is still an exact normalised density with every constant kept:
    ``torch.distributions.LowRankMultivariateNormal`` (Woodbury identity and the matrix determinant lemma, O(D r²)).
    σ = ``min_sigma`` + softplus(raw + offset) as in ``gaussian-learned`` (the offset starts σ at the data's spread),
    so the density stays bounded; W starts near 0 (the decoder's small initial outputs, scaled by ``1/sqrt(r)``).
    """

    name = "gaussian-lowrank"
    sigma_offset: torch.Tensor  # a buffer

    def __init__(self, rank: int = 2, min_sigma: float = 1e-3):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer (the columns of W), got {rank!r}")
        min_sigma = float(min_sigma)
        if not (min_sigma > 0.0 and math.isfinite(min_sigma)):
            raise ValueError(f"min_sigma must be a positive finite number, got {min_sigma}")
        self.rank, self.min_sigma, self.num_params = rank, min_sigma, 2 + rank
        self.register_buffer("sigma_offset", torch.tensor(0.0))

    def _parts(self, params: torch.Tensor, event_ndim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(μ [*batch, D], σ [*batch, D], W [*batch, D, r]) with the event dimensions flattened."""
        blocks = _split(params, self.num_params, event_ndim)
        batch = params.shape[: params.dim() - event_ndim]
        flat = [b.reshape(batch + (-1,)) for b in blocks]
        scale = nn.functional.softplus(flat[1] + self.sigma_offset.to(flat[1].dtype)) + self.min_sigma
        factor = torch.stack(flat[2:], dim=-1) / math.sqrt(self.rank)
        return flat[0], scale, factor

    def forward(self, params: torch.Tensor, event_ndim: int = 1) -> Distribution:
        loc, scale, factor = self._parts(params, event_ndim)
        flat = LowRankMultivariateNormal(loc, factor, scale.pow(2), validate_args=False)
        event_shape = _split(params, self.num_params, event_ndim)[0].shape[params.dim() - event_ndim:]
        return flat if event_ndim == 1 else _FlatEvent(flat, event_shape)

    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Start σ (at a decoder output of 0) at the standard deviation of the training values."""
        with torch.no_grad():
            self.sigma_offset.fill_(_softplus_inverse(max(float(x.float().std()) - self.min_sigma, 1e-4)))

    def mean(self, params: torch.Tensor, event_ndim: int = 1) -> torch.Tensor:
        return _split(params, self.num_params, event_ndim)[0]

    def config(self) -> dict:
        return {"name": self.name, "rank": self.rank, "min_sigma": self.min_sigma}


class StudentTLearnedScale(Likelihood):
    """Student's t per dimension: q(x|z) = Π_j t_ν(x_j; μ_j(z), s_j(z)), location and scale from the decoder (twice
    the outputs, as ``gaussian-learned``), ν the degrees of freedom (``df``: fixed; None: one learned ν for all
    dimensions, ν = ``min_df`` + softplus(raw), starting at 10).

    Heavy tails: a training row far from the decoder's mean costs ``O(ln |x - μ|)`` rather than ``O((x - μ)²)``,
    so a few outlying rows do not pull σ up for every row. The exact normalised density of
    ``torch.distributions.StudentT`` (every constant kept). ν -> ∞ is the Gaussian.
    """

    name = "student-t"
    num_params = 2
    sigma_offset: torch.Tensor  # a buffer
    START_DF = 10.0

    def __init__(self, df: float | None = None, min_df: float = 1.0, min_sigma: float = 1e-3):
        super().__init__()
        for key, value in (("min_df", min_df), ("min_sigma", min_sigma)) + ((("df", df),) if df is not None else ()):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(f"{key} must be a positive finite number, got {value!r}")
        self.df = None if df is None else float(df)
        self.min_df, self.min_sigma = float(min_df), float(min_sigma)
        if self.df is None:
            self.df_param = nn.Parameter(torch.tensor(_softplus_inverse(max(self.START_DF - self.min_df, 1e-3))))
        self.register_buffer("sigma_offset", torch.tensor(0.0))

    def degrees_of_freedom(self) -> torch.Tensor:
        if self.df is not None:
            return torch.tensor(self.df)
        return self.min_df + nn.functional.softplus(self.df_param)

    def forward(self, params: torch.Tensor, event_ndim: int = 1) -> Distribution:
        loc, raw = _split(params, 2, event_ndim)
        scale = nn.functional.softplus(raw + self.sigma_offset.to(raw.dtype)) + self.min_sigma
        df = self.degrees_of_freedom().to(device=loc.device, dtype=loc.dtype).expand_as(loc)
        return Independent(StudentT(df, loc, scale, validate_args=False), event_ndim, validate_args=False)

    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Start the scale (at a decoder output of 0) at the standard deviation of the training values."""
        with torch.no_grad():
            self.sigma_offset.fill_(_softplus_inverse(max(float(x.float().std()) - self.min_sigma, 1e-4)))

    def mean(self, params: torch.Tensor, event_ndim: int = 1) -> torch.Tensor:
        return _split(params, 2, event_ndim)[0]  # the location (the mean where ν > 1)

    def config(self) -> dict:
        return {"name": self.name, "df": self.df, "min_df": self.min_df, "min_sigma": self.min_sigma}


def batch_fitting(model: nn.Module, enabled: bool = True) -> contextlib.ExitStack:
    """Enter :meth:`GaussianSharedVariance.fitting` (and any module's ``fitting``) for every module of ``model``:
    what the training objective does on a model in training mode. Scoring functions never do."""
    stack = contextlib.ExitStack()
    if enabled:
        for module in model.modules() if isinstance(model, nn.Module) else ():
            fitting = getattr(module, "fitting", None)
            if callable(fitting):
                stack.enter_context(fitting(True))
    return stack


class ScaledDensity(Distribution):
    """The density of the user's data when the model works on standardised values x' = (x - m) / s:

        log p(x) = log p'(x') - Σ_j ln s_j        (change of variables; ``log_scale_sum`` = Σ_j ln s_j)

    Values (``mean``, ``sample``, the argument of ``log_prob``) are in the model's standardised coordinates; only
    the density is that of the data in the units of the user's file. Without the Jacobian, a table with a column
    in thousands would report an NLL below the data's true entropy.
    """

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, base: Distribution, log_scale_sum: torch.Tensor):
        self.base, self.log_scale_sum = base, log_scale_sum
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]  # read-only on purpose: the base decides
        return self.base.has_rsample

    @property
    def mean(self) -> torch.Tensor:
        return self.base.mean

    def rsample(self, sample_shape: _size = torch.Size()) -> torch.Tensor:
        return self.base.rsample(sample_shape)

    def sample(self, sample_shape: _size = torch.Size()) -> torch.Tensor:
        return self.base.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value) - self.log_scale_sum.to(value.dtype)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (Bernoulli, GaussianFixedVariance, GaussianLearnedVariance, GaussianSharedVariance,
                              GaussianLowRank, StudentTLearnedScale)
}


def _register_text() -> None:
    """The autoregressive likelihood of sentences lives with the text modules (``bayesvae.text``)."""
    from .text.likelihood import Autoregressive

    LIKELIHOODS[Autoregressive.name] = Autoregressive


_register_text()


def make_likelihood(name: str, **kwargs: Any) -> Likelihood:
    """Build a registered likelihood by name (only registered names: checkpoints cannot name arbitrary code)."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    try:
        return LIKELIHOODS[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad options for likelihood {name!r}: {err}") from None
