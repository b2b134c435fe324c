"""The unit sphere S^{d-1} in R^d: a von Mises-Fisher posterior of FIXED concentration κ and the uniform prior.

Densities are with respect to the surface measure of S^{d-1} (that is what the importance weights need: both the
posterior and the prior live on the same sphere, so their ratio is a ratio of densities on one base measure):

    log vMF(z; μ, κ) = log C_d(κ) + κ <μ, z>,    C_d(κ) = κ^{d/2-1} / ((2π)^{d/2} I_{d/2-1}(κ))
    log U(z)         = -log |S^{d-1}|,           |S^{d-1}| = 2 π^{d/2} / Γ(d/2)

KL(vMF(μ, κ) || U) = κ A_d(κ) + log C_d(κ) + log |S^{d-1}| with A_d(κ) = I_{d/2}(κ) / I_{d/2-1}(κ) = E[<μ, z>]:
a constant, the same for every x, so it can neither vanish nor send a gradient through a Bessel function.

Sampling is Wood's (1994) exact rejection scheme for w = <z, μ>, whose density on [-1, 1] is
∝ exp(κw) (1 - w²)^{(d-3)/2}; then z = w μ + sqrt(1 - w²) ν with ν uniform on the unit sphere of the tangent space
at μ. With κ fixed, w never depends on a parameter, so the sample is reparameterised through μ alone.

The Bessel functions come from ``scipy.special.ive`` (exponentially scaled, so large κ does not overflow); where
even the scaled value underflows (large order, small κ: e.g. d = 512, κ < 60) the power series of I_ν is summed in
log space instead. Both are evaluated once per (d, κ), in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.distributions import Distribution, constraints, register_kl
from torch.types import Device, _size

__all__ = ["log_bessel_iv", "log_vmf_normalizer", "mean_resultant_length", "log_sphere_area", "vmf_kl_to_uniform",
           "sample_vmf_w", "VonMisesFisher", "UniformSphere"]

#: Below this, ``ive`` is too close to float64's underflow to trust; the series takes over.
_IVE_FLOOR = 1e-250


def log_bessel_iv(order: float, kappa: float) -> float:
    """log I_ν(κ) for ν ≥ 0, κ > 0, in float64: ``log(ive(ν, κ)) + κ``, or the log-space power series
    Σ_k (κ/2)^{2k+ν} / (k! Γ(k+ν+1)) where ``ive`` underflows."""
    from scipy.special import gammaln, ive

    order, kappa = float(order), float(kappa)
    if not (kappa > 0 and math.isfinite(kappa)) or order < 0:
        raise ValueError(f"log_bessel_iv needs order >= 0 and a finite kappa > 0, got order {order}, kappa {kappa}")
    scaled = float(ive(order, kappa))
    if scaled > _IVE_FLOOR and math.isfinite(scaled):
        return math.log(scaled) + kappa
    # The series: every term positive, so logsumexp of the terms loses nothing. The largest term sits near
    # k* = (sqrt(ν² + κ²) - ν) / 2; summing to k* + 40 sqrt(k* + 1) + 60 leaves a tail far below 1e-16.
    k_star = 0.5 * (math.hypot(order, kappa) - order)
    k = np.arange(0, int(k_star + 40.0 * math.sqrt(k_star + 1.0) + 60.0), dtype=np.float64)
    log_terms = (2.0 * k + order) * math.log(kappa / 2.0) - gammaln(k + 1.0) - gammaln(k + order + 1.0)
    top = log_terms.max()
    return float(top + math.log(np.exp(log_terms - top).sum()))


def log_sphere_area(dim: int) -> float:
    """log |S^{dim-1}| = log 2 + (dim/2) log π - log Γ(dim/2): the surface area of the unit sphere in R^dim."""
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


def log_vmf_normalizer(dim: int, kappa: float) -> float:
    """log C_d(κ) = (d/2 - 1) log κ - (d/2) log 2π - log I_{d/2-1}(κ), d = ``dim`` (the ambient dimension)."""
    _check_dim_kappa(dim, kappa)
    nu = 0.5 * dim - 1.0
    return nu * math.log(kappa) - 0.5 * dim * math.log(2.0 * math.pi) - log_bessel_iv(nu, kappa)


def mean_resultant_length(dim: int, kappa: float) -> float:
    """A_d(κ) = I_{d/2}(κ) / I_{d/2-1}(κ) = E[<μ, z>], in (0, 1)."""
    _check_dim_kappa(dim, kappa)
    return math.exp(log_bessel_iv(0.5 * dim, kappa) - log_bessel_iv(0.5 * dim - 1.0, kappa))


def vmf_kl_to_uniform(dim: int, kappa: float) -> float:
    """KL(vMF(μ, κ) || U(S^{d-1})) = κ A_d(κ) + log C_d(κ) + log |S^{d-1}| in nats (≥ 0, independent of μ)."""
    return kappa * mean_resultant_length(dim, kappa) + log_vmf_normalizer(dim, kappa) + log_sphere_area(dim)


def _check_dim_kappa(dim: object, kappa: object) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"a sphere latent needs dimension d >= 2 (S^1 is the circle), got {dim!r}")
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not (0 < kappa < math.inf):
        raise ValueError(f"kappa must be a finite number > 0, got {kappa!r}")


def sample_vmf_w(dim: int, kappa: float, shape: _size, *, generator: torch.Generator | None = None,
                 device: Device = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact draws of w = <z, μ> (Wood 1994), vectorised: rounds of proposals for the still-pending entries.

    Returns (w, 1 - w), both float64 Tensor[shape]; 1 - w is computed without cancellation (for large κ, w is
    within 1e-4 of 1 and 1 - w is what sqrt(1 - w²) needs).

    Envelope: b = (d-1) / (2κ + sqrt(4κ² + (d-1)²)), x0 = (1-b)/(1+b), c = κ x0 + (d-1) log(1 - x0²);
    Z ~ Beta((d-1)/2, (d-1)/2), U ~ U(0, 1); w = (1 - (1+b)Z) / (1 - (1-b)Z); accept when
    κ w + (d-1) log(1 - x0 w) - c ≥ log U.
    """
    _check_dim_kappa(dim, kappa)
    shape = torch.Size(shape)
    n, m = shape.numel(), float(dim - 1)
    b = m / (2.0 * kappa + math.sqrt(4.0 * kappa * kappa + m * m))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m * math.log1p(-x0 * x0)
    w = torch.empty(n, dtype=torch.float64, device=device)
    one_minus_w = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    alpha = torch.full((1,), 0.5 * m, dtype=torch.float64, device=device)
    while pending.numel() > 0:
        k = pending.numel()
        g1 = torch._standard_gamma(alpha.expand(k).contiguous(), generator=generator)
        g2 = torch._standard_gamma(alpha.expand(k).contiguous(), generator=generator)
        z = g1 / (g1 + g2)
        u = torch.rand(k, dtype=torch.float64, device=device, generator=generator)
        denom = 1.0 - (1.0 - b) * z
        w_k = (1.0 - (1.0 + b) * z) / denom
        omw_k = 2.0 * b * z / denom
        # 1 - x0 w = (1 - x0) + x0 (1 - w): no cancellation when both x0 and w are near 1.
        accept = kappa * w_k + m * torch.log((1.0 - x0) + x0 * omw_k) - c >= torch.log(u)
        idx = pending[accept]
        w[idx], one_minus_w[idx] = w_k[accept], omw_k[accept]
        pending = pending[~accept]
    return w.reshape(shape), one_minus_w.reshape(shape)


class VonMisesFisher(Distribution):
    """vMF(μ, κ) on S^{d-1} with a fixed scalar κ; ``loc`` μ has unit norm, shape [..., d].

    ``log_prob`` is the density with respect to the surface measure; ``mean`` is E[z] = A_d(κ) μ (inside the ball);
    ``mode`` is μ (on the sphere: what reconstructions and pictures use).
    """

    arg_constraints = {"loc": constraints.real_vector}
    support = constraints.real_vector  # torch has no sphere constraint; samples have unit norm
    has_rsample = True
    accepts_generator = True

    def __init__(self, loc: torch.Tensor, kappa: float, *, log_normalizer: float | None = None,
                 mean_resultant: float | None = None):
        if loc.dim() < 1 or loc.shape[-1] < 2:
            raise ValueError(f"loc must have shape [..., d] with d >= 2, got {tuple(loc.shape)}")
        self.loc, self.kappa, self.dim = loc, float(kappa), int(loc.shape[-1])
        self.log_normalizer = log_vmf_normalizer(self.dim, self.kappa) if log_normalizer is None else log_normalizer
        self.mean_resultant = (mean_resultant_length(self.dim, self.kappa) if mean_resultant is None
                               else mean_resultant)
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.mean_resultant * self.loc

    @property
    def mode(self) -> torch.Tensor:
        return self.loc

    def rsample(self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """z = w μ + sqrt(1 - w²) ν, ``Tensor[*sample_shape, *batch, d]``; gradients flow through μ only."""
        shape = torch.Size(sample_shape) + self.loc.shape
        w, omw = sample_vmf_w(self.dim, self.kappa, shape[:-1], generator=generator, device=self.loc.device)
        radial = torch.sqrt(omw * (2.0 - omw))  # sqrt((1 - w)(1 + w)) = sqrt(1 - w²)
        # In float64: the projection onto the tangent space cancels when v is nearly parallel to μ.
        v = torch.randn(shape, dtype=torch.float64, device=self.loc.device, generator=generator)
        mu = torch.nn.functional.normalize(self.loc.double(), dim=-1).expand(shape)  # |μ| = 1 to float64's 1e-16
        for _ in range(2):  # project onto the tangent space at μ twice (Gram-Schmidt's classic remedy)
            v = v - (v * mu).sum(-1, keepdim=True) * mu
        norm: torch.Tensor = torch.linalg.vector_norm(v, dim=-1, keepdim=True)  # (torch.linalg is untyped)
        nu = v / norm.clamp_min(1e-300)
        return (w.unsqueeze(-1) * mu + radial.unsqueeze(-1) * nu).to(self.loc.dtype)

    def sample(self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log C_d(κ) + κ <μ, z>, Tensor[...] (density on S^{d-1} w.r.t. its surface measure)."""
        return self.log_normalizer + self.kappa * (value * self.loc).sum(-1)

    def entropy(self) -> torch.Tensor:
        value = -self.log_normalizer - self.kappa * self.mean_resultant
        return torch.full(self.batch_shape, value, dtype=self.loc.dtype, device=self.loc.device)


class UniformSphere(Distribution):
    """The uniform distribution on S^{d-1} (density ``1/|S^{d-1}|`` w.r.t. the surface measure), empty batch shape."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, latent_dim: int, *, dtype: torch.dtype = torch.float32, device: Device = None):
        _check_dim_kappa(int(latent_dim), 1.0)
        self.latent_dim, self._dtype, self._device = int(latent_dim), dtype, device
        self.log_area = log_sphere_area(self.latent_dim)
        super().__init__(torch.Size(), torch.Size([self.latent_dim]), validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self.latent_dim, dtype=self._dtype, device=self._device)

    def rsample(self, sample_shape: _size = torch.Size()) -> torch.Tensor:
        """Normalised standard-normal vectors: uniform on the sphere by rotational symmetry."""
        v = torch.randn(torch.Size(sample_shape) + self.event_shape, dtype=self._dtype, device=self._device)
        norm: torch.Tensor = torch.linalg.vector_norm(v, dim=-1, keepdim=True)  # (torch.linalg is untyped)
        return v / norm.clamp_min(1e-30)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.full(value.shape[:-1], -self.log_area, dtype=value.dtype, device=value.device)

    def entropy(self) -> torch.Tensor:
        return torch.tensor(self.log_area, dtype=self._dtype, device=self._device)


@register_kl(VonMisesFisher, UniformSphere)
def _kl_vmf_uniform(q: VonMisesFisher, p: UniformSphere) -> torch.Tensor:
    if q.dim != p.latent_dim:
        raise ValueError(f"vMF on S^{q.dim - 1} against a uniform prior on S^{p.latent_dim - 1}")
    value = q.kappa * q.mean_resultant + q.log_normalizer + p.log_area
    return torch.full(q.batch_shape, value, dtype=q.loc.dtype, device=q.loc.device)
