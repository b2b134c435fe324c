"""Posteriors p(z|x) (seed eq. 15) and their KL to the prior (eq. 16).

A posterior head turns the encoder's raw output ``[B, num_params(d)]`` into a Distribution with
``batch_shape [B]`` and ``event_shape [d]``. KL divergences are registered with ``torch.distributions.kl``, so
objectives call ``kl_divergence(q, prior)`` and never branch on the kind of posterior.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, constraints, register_kl

from .priors import StandardNormal

__all__ = ["DiagonalNormal", "Posterior", "DiagonalGaussian", "POSTERIORS", "make_posterior", "kl_per_dimension", "soft_clamp"]

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
            raise ValueError(f"loc and logvar must have the same shape [..., d], got {tuple(loc.shape)} and {tuple(logvar.shape)}")
        self.loc, self.logvar = loc, logvar
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.logvar.exp()

    @property
    def stddev(self) -> torch.Tensor:
        return (0.5 * self.logvar).exp()

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. (23), the reparameterisation: z = μ + σ ⊙ ε, ε ~ N(0, I). Tensor[*sample_shape, B, d]."""
        eps = torch.randn(torch.Size(sample_shape) + self.loc.shape, dtype=self.loc.dtype, device=self.loc.device,
                          generator=generator)
        return self.loc + self.stddev * eps

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
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
    """Contract: ``num_params(d)`` encoder outputs; ``forward(params [B, num_params]) -> Distribution``."""

    name = "posterior"

    def num_params(self, latent_dim: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}


class DiagonalGaussian(Posterior):
    """Eq. (15): two encoder heads, μ(x) and ln σ²(x); the log-variance is kept in (-30, 20) by
    :func:`soft_clamp` (the identity on [-20, 10], smooth shoulders beyond, never a zero gradient)."""

    name = "diagonal-gaussian"

    def num_params(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def forward(self, params: torch.Tensor) -> DiagonalNormal:
        loc, logvar = params.chunk(2, dim=-1)
        return DiagonalNormal(loc, soft_clamp(logvar))


POSTERIORS: dict[str, type[Posterior]] = {DiagonalGaussian.name: DiagonalGaussian}


def make_posterior(name: str) -> Posterior:
    if name not in POSTERIORS:
        raise ValueError(f"unknown posterior {name!r}; choose one of {sorted(POSTERIORS)}")
    return POSTERIORS[name]()
