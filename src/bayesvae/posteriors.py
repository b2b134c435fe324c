"""Posteriors p(z|x) (seed eq. 15) and their KL to the prior (eq. 16).

A posterior head turns the encoder's raw output ``[B, num_params(d)]`` into a Distribution with
``batch_shape [B]`` and ``event_shape [d]``. KL divergences are registered with ``torch.distributions.kl``, so
objectives call ``kl_divergence(q, prior)`` and never branch on the kind of posterior.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution, constraints, register_kl
from torch.types import _size

from . import draws
from .errors import ConfigError
from .likelihoods import BatchFitted
from .priors import StandardNormal
from .sphere import VonMisesFisher, log_vmf_normalizer, mean_resultant_length

__all__ = ["DiagonalNormal", "Posterior", "DiagonalGaussian", "VonMisesFisherPosterior", "POSTERIORS",
           "make_posterior", "kl_per_dimension", "check_posterior_options", "BN_EPS", "soft_clamp"]

_LOG_2PI = math.log(2.0 * math.pi)

#: Safe range of the log-variance: exp(20) ≈ 5e8 and exp(-30) ≈ 1e-13 stay finite in float32 and bf16.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
#: Width of the smooth shoulders of :func:`soft_clamp`: the identity on [MIN + 10, MAX - 10] = [-20, 10].
LOGVAR_SHOULDER = 10.0


def soft_clamp(x: torch.Tensor, lo: float = LOGVAR_MIN, hi: float = LOGVAR_MAX,
               width: float = LOGVAR_SHOULDER) -> torch.Tensor:
    """A bound on ``x`` whose gradient never vanishes: the identity on [lo + width, hi - width], and beyond,
    exponential shoulders that approach lo and hi (value and slope continuous at the joins):

        y = hi - width·exp(-(x - a)/width) for x > a = hi - width,   y = lo + width·exp((x - b)/width) for x < b.

    A hard clamp has slope 0 outside its range, so a unit whose raw log-variance passed it could never come back
    (its KL of 1e8 nats had gradient exactly 0); here the slope is exp(-|x - a|/width) > 0 and the KL pulls it
    back. The value is what is sampled and scored, so the density stays exact.
    """
    a, b = hi - width, lo + width
    upper = hi - width * torch.exp(-(x.clamp(min=a) - a) / width)
    lower = lo + width * torch.exp((x.clamp(max=b) - b) / width)
    return torch.where(x > a, upper, torch.where(x < b, lower, x))


class DiagonalNormal(Distribution):
    """N(μ, diag exp(logvar)), parameterised by the log-variance so the KL of eq. (16) is exact and stable."""

    arg_constraints = {"loc": constraints.real_vector, "logvar": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True
    #: ``sample``/``rsample`` accept ``generator=`` (estimators use it for per-example reproducible draws).
    accepts_generator = True

    def __init__(self, loc: torch.Tensor, logvar: torch.Tensor):
        if loc.shape != logvar.shape or loc.dim() < 1:
            raise ValueError(f"loc and logvar must have the same shape [..., d], got {tuple(loc.shape)} "
                             f"and {tuple(logvar.shape)}")
        self.loc, self.logvar = loc, logvar
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def mode(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.logvar.exp()

    @property
    def stddev(self) -> torch.Tensor:
        return (0.5 * self.logvar).exp()

    def rsample(self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. (23), the reparameterisation: z = μ + σ ⊙ ε, ε ~ N(0, I). ``Tensor[*sample_shape, B, d]``. Within a
        training step, ε comes from the step's draws (:mod:`bayesvae.draws`), the same for an example however many
        processes share the batch."""
        step = draws.current(rows=self.loc.shape[0]) if generator is None and self.loc.dim() == 2 else None
        if step is not None:
            eps = step.normal(tuple(sample_shape), self.loc.shape[1:], dtype=self.loc.dtype).to(self.loc.device)
        else:
            eps = torch.randn(torch.Size(sample_shape) + self.loc.shape, dtype=self.loc.dtype,
                              device=self.loc.device, generator=generator)
        return self.loc + self.stddev * eps

    def sample(self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Tensor[..., B]: -½ Σ_k [(z_k - μ_k)² / σ_k² + ln σ_k² + ln 2π]."""
        sq = (value - self.loc).pow(2) * (-self.logvar).exp()
        return -0.5 * (sq + self.logvar + _LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return 0.5 * (self.logvar + 1.0 + _LOG_2PI).sum(-1)

    def kl_to_standard_normal(self) -> torch.Tensor:
        """Eq. (16) per dimension, Tensor[B, d]: ½ (μ² + σ² - ln σ² - 1), computed in at least float32."""
        loc, logvar = self.loc, self.logvar
        if loc.dtype in (torch.float16, torch.bfloat16):
            loc, logvar = loc.float(), logvar.float()
        # expm1(lv) - lv is ≥ 0 to the last bit, where exp(lv) - lv - 1 can round below zero near lv = 0.
        return 0.5 * (loc.pow(2) + (torch.expm1(logvar) - logvar))


@register_kl(DiagonalNormal, StandardNormal)
def _kl_diagonal_standard(q: DiagonalNormal, p: StandardNormal) -> torch.Tensor:
    return q.kl_to_standard_normal().sum(-1)


def kl_per_dimension(q: Distribution, prior: Distribution) -> torch.Tensor:
    """KL(q || prior) per latent dimension, Tensor[B, d], for factorised pairs that have a closed form."""
    if isinstance(q, DiagonalNormal) and isinstance(prior, StandardNormal):
        return q.kl_to_standard_normal()
    raise TypeError(f"no per-dimension KL for {type(q).__name__} against {type(prior).__name__}")


class Posterior(nn.Module):
    """Contract: ``num_params(d)`` encoder outputs; ``forward(params [B, num_params]) -> Distribution``.

    Class attributes: ``priors``, the prior names whose support and base measure this posterior shares (the first
    is the default); ``factorised``, whether the KL splits into per-dimension terms (free bits and the
    per-dimension KL need it).
    """

    name = "posterior"
    priors: tuple[str, ...] = ("standard-normal",)
    factorised = True

    def num_params(self, latent_dim: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def check_options(options: dict, latent_dim: int | None) -> None:  # pragma: no cover - abstract
        """Raise ConfigError unless ``options`` are valid constructor options for this latent dimension."""
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}

    def kl_bound(self) -> float | None:
        """A lower bound (nats, summed over dimensions) on the expected KL that the construction guarantees, or
        None when there is none."""
        return None

    def describe(self) -> str:
        return self.name


def _number(options: dict, key: str, low: float, high: float, what: str) -> float:
    value = options[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low < value < high:
        raise ConfigError(f"posterior option {key!r} must be {what}, got {value!r}")
    return float(value)


#: The largest κ accepted (log C_d(κ) and the sampler are checked up to here, for d up to 512).
KAPPA_MAX = 1e4

#: The ε of the batch normalisation of μ (and σ); the γ form's bound holds under batch statistics up to the factor
#: Var/(Var + ε). Not BatchNorm's default 1e-5: that ε gives the KL a gradient towards a raw variance below ε, and
#: Adam, which normalises every gradient's size, follows it; on PTB with an LSTM encoder the raw variance of μ fell
#: from 0.07 to 2e-9 in 200 steps and the KL with it, from the floor d γ²/2 = 5.76 to 0.001 nats (with 1e-10 it
#: stayed at 5.76). A smaller ε keeps the factor 1 to within 1e-8 for any raw variance above 1e-2.
BN_EPS = 1e-10


class DiagonalGaussian(BatchFitted, Posterior):
    """Eq. (15): two encoder heads, μ(x) and ln σ²(x); the log-variance is kept in (-30, 20) by
    :func:`soft_clamp` (the identity on [-20, 10], smooth shoulders beyond, never a zero gradient).

    Options (VAE + BN, against KL vanishing; at most one):

    - ``bn_gamma=γ``: μ is batch-normalised with the fixed scale γ and a learned shift β (no learned scale). In a
      training batch the mean of μ_j² is then γ² + β_j² (times Var/(Var + ε)), so, as σ² - ln σ² - 1 ≥ 0, the
      batch's mean KL is at least d γ²/2.
    - ``bn_tau=τ`` (the refinement): μ and the standard deviation are batch-normalised without shift, σ through
      the absolute value of its normalised output, with scales γ_μ² = τ + (1-τ) s and γ_σ² = (1-τ)(1-s),
      s = sigmoid(θ) learned. Then E[μ² + σ²] = 1 per dimension (the prior's second moment) and, by Jensen,
      E[KL] = -½ E[ln σ²] ≥ -½ ln γ_σ² ≥ -½ ln(1-τ) per dimension.

    Only the training objective (:class:`bayesvae.objectives.TrainingObjective`, which enters :meth:`fitting` on a
    model in training mode) normalises with the batch's statistics and updates the running ones; everything else,
    ``elbo``, ``iwae_bound`` and the estimators included, uses the running statistics in either mode, so a bound
    changes no buffer, gives the same value in training and eval mode, does not depend on which other examples
    share its batch, and works on a batch of one. A training loop of one's own calls the objective (or enters
    ``fitting``), as the trainer does.
    """

    name = "diagonal-gaussian"

    def __init__(self, latent_dim: int | None = None, *, bn_gamma: float | None = None, bn_tau: float | None = None):
        super().__init__()
        type(self).check_options({k: v for k, v in (("bn_gamma", bn_gamma), ("bn_tau", bn_tau))
                                  if v is not None}, latent_dim)
        self.bn_gamma = None if bn_gamma is None else float(bn_gamma)
        self.bn_tau = None if bn_tau is None else float(bn_tau)
        self.latent_dim = latent_dim
        self.fit_to_batch = False
        if bn_gamma is not None or bn_tau is not None:
            assert latent_dim is not None  # check_options refused the options without it
            self.mean_norm = nn.BatchNorm1d(latent_dim, eps=BN_EPS, affine=False)
            if bn_gamma is not None:
                self.shift = nn.Parameter(torch.zeros(latent_dim))
            if bn_tau is not None:
                self.scale_norm = nn.BatchNorm1d(latent_dim, eps=BN_EPS, affine=False)
                self.theta = nn.Parameter(torch.zeros(()))

    @staticmethod
    def check_options(options: dict, latent_dim: int | None) -> None:
        unknown = sorted(set(options) - {"bn_gamma", "bn_tau"})
        if unknown:
            raise ConfigError(f"unknown diagonal-gaussian posterior option(s) {unknown}; valid: bn_gamma, bn_tau")
        if "bn_gamma" in options and "bn_tau" in options:
            raise ConfigError("choose one batch-norm form: bn_gamma (BN on μ, fixed scale) or bn_tau (the refinement)")
        if "bn_gamma" in options:
            _number(options, "bn_gamma", 0.0, math.inf, "a finite number > 0 (e.g. 0.5)")
        if "bn_tau" in options:
            _number(options, "bn_tau", 0.0, 1.0, "a number in (0, 1) (e.g. 0.5)")
        if options and (latent_dim is None or latent_dim <= 0):
            raise ConfigError("the batch-norm options need the latent dimension")

    def num_params(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def _normalise(self, norm: nn.BatchNorm1d, v: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor
        if self.fit_to_batch and norm.training:
            # The first training batch sets the running statistics (not 10% of them, as BatchNorm's momentum
            # would, leaving 90% of the initial variance 1): a short run's bounds use statistics of its encoder.
            if not getattr(norm, "_started", False):  # the counter is read until a batch was seen (a device sync)
                first = norm.num_batches_tracked is not None and int(norm.num_batches_tracked) == 0
                norm.momentum = 1.0 if first else 0.1
                object.__setattr__(norm, "_started", not first)
            out = norm(v)
            return out
        if not norm.training:
            out = norm(v)
            return out
        norm.train(False)  # a bound on a model in training mode: the running statistics, no update
        try:
            out = norm(v)
            return out
        finally:
            norm.train(True)

    def config(self) -> dict:
        out: dict[str, Any] = {"name": self.name}
        out.update({k: v for k, v in (("bn_gamma", self.bn_gamma), ("bn_tau", self.bn_tau)) if v is not None})
        return out

    def scales(self) -> tuple[float, float] | None:
        """(γ_μ², γ_σ²) of the τ form at the current θ."""
        if self.bn_tau is None:
            return None
        s, tau = float(torch.sigmoid(self.theta.detach())), self.bn_tau
        return tau + (1 - tau) * s, (1 - tau) * (1 - s)

    def kl_bound(self) -> float | None:
        d = self.latent_dim or 0  # set whenever a batch-norm option is (check_options)
        if self.bn_gamma is not None:
            return 0.5 * d * self.bn_gamma ** 2
        if self.bn_tau is not None:
            return -0.5 * d * math.log1p(-self.bn_tau)
        return None

    def describe(self) -> str:
        if self.bn_gamma is not None:
            return f"{self.name} + BN on μ (γ = {self.bn_gamma:g}, learned shift)"
        if self.bn_tau is not None:
            return f"{self.name} + BN on μ and σ (τ = {self.bn_tau:g}, γ_μ² + γ_σ² = 1)"
        return self.name

    def forward(self, params: torch.Tensor) -> DiagonalNormal:
        loc, raw = params.chunk(2, dim=-1)
        if self.bn_gamma is not None:
            loc = self.bn_gamma * self._normalise(self.mean_norm, loc) + self.shift
        elif self.bn_tau is not None:
            s = torch.sigmoid(self.theta)
            var_mu = self.bn_tau + (1.0 - self.bn_tau) * s
            var_sigma = (1.0 - self.bn_tau) * (1.0 - s)
            loc = var_mu.sqrt() * self._normalise(self.mean_norm, loc)
            # ln σ² = ln γ_σ² + 2 ln |BN(raw)|; the floor keeps ln finite (and its gradient) at an exact zero.
            logvar = var_sigma.log() + 2.0 * self._normalise(self.scale_norm, raw).abs().clamp_min(1e-15).log()
            return DiagonalNormal(loc, soft_clamp(logvar))
        return DiagonalNormal(loc, soft_clamp(raw))


class VonMisesFisherPosterior(Posterior):
    """vMF(μ(x), κ) on S^{d-1} with a FIXED κ: the encoder gives a direction (d outputs), normalised to μ.

    Its prior is the uniform distribution on the sphere; the KL is the constant of :func:`bayesvae.sphere.
    vmf_kl_to_uniform`, registered with ``torch.distributions.kl_divergence``. log C_d(κ) and A_d(κ) are computed
    once here, in float64.
    """

    name = "vmf"
    priors = ("uniform-sphere",)
    factorised = False

    def __init__(self, latent_dim: int, *, kappa: float):
        super().__init__()
        type(self).check_options({"kappa": kappa}, latent_dim)
        self.latent_dim, self.kappa = int(latent_dim), float(kappa)
        self.log_normalizer = log_vmf_normalizer(self.latent_dim, self.kappa)
        self.mean_resultant = mean_resultant_length(self.latent_dim, self.kappa)

    @staticmethod
    def check_options(options: dict, latent_dim: int | None) -> None:
        unknown = sorted(set(options) - {"kappa"})
        if unknown:
            raise ConfigError(f"unknown vmf posterior option(s) {unknown}; the only option is kappa")
        if "kappa" not in options:
            raise ConfigError("the vmf posterior needs its fixed concentration: posterior_options={'kappa': K} "
                              "(CLI: --kappa K), e.g. K = 50")
        _number(options, "kappa", 0.0, KAPPA_MAX * (1 + 1e-12), f"a number in (0, {KAPPA_MAX:g}]")
        if latent_dim is not None and latent_dim < 2:
            raise ConfigError(f"a vmf latent lives on S^(d-1) and needs d >= 2, got latent_dim {latent_dim}")

    def num_params(self, latent_dim: int) -> int:
        return latent_dim

    def config(self) -> dict:
        return {"name": self.name, "kappa": self.kappa}

    def kl_bound(self) -> float | None:
        from .sphere import vmf_kl_to_uniform

        return vmf_kl_to_uniform(self.latent_dim, self.kappa)  # the KL itself: a constant

    def describe(self) -> str:
        return f"vmf (κ = {self.kappa:g}, fixed) on S^{self.latent_dim - 1}"

    def forward(self, params: torch.Tensor) -> VonMisesFisher:
        mu = torch.nn.functional.normalize(params, dim=-1, eps=1e-12)
        return VonMisesFisher(mu, self.kappa, log_normalizer=self.log_normalizer,
                              mean_resultant=self.mean_resultant)


POSTERIORS: dict[str, type[Posterior]] = {DiagonalGaussian.name: DiagonalGaussian,
                                          VonMisesFisherPosterior.name: VonMisesFisherPosterior}


def check_posterior_options(name: str, options: dict, latent_dim: int | None) -> None:
    """Raise ConfigError unless ``options`` are valid for the posterior ``name``."""
    if name not in POSTERIORS:
        raise ConfigError(f"unknown posterior {name!r}; choose one of {sorted(POSTERIORS)}")
    if not isinstance(options, dict):
        raise ConfigError(f"posterior options must be a JSON object, got {options!r}")
    POSTERIORS[name].check_options(options, latent_dim)


def make_posterior(name: str, latent_dim: int | None = None, options: dict | None = None) -> Posterior:
    check_posterior_options(name, dict(options or {}), latent_dim)
    return POSTERIORS[name](latent_dim, **dict(options or {}))
