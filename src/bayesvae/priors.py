"""Priors q(z) (seed eq. 7): the same object enters the loss, the estimator and sampling."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, constraints
from torch.types import Device, _size

from .sphere import UniformSphere

__all__ = ["StandardNormal", "Prior", "StandardNormalPrior", "UniformSpherePrior", "PRIORS", "make_prior"]

_LOG_2PI = math.log(2.0 * math.pi)


class StandardNormal(Distribution):
    """N(0, I) over ``event_shape = [d]`` with an empty batch shape; broadcasts against any batch of z."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, latent_dim: int, *, dtype: torch.dtype = torch.float32, device: Device = None):
        self.latent_dim, self._dtype, self._device = int(latent_dim), dtype, device
        super().__init__(torch.Size(), torch.Size([self.latent_dim]), validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self.latent_dim, dtype=self._dtype, device=self._device)

    @property
    def variance(self) -> torch.Tensor:
        return torch.ones(self.latent_dim, dtype=self._dtype, device=self._device)

    def rsample(self, sample_shape: _size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.event_shape
        return torch.randn(shape, dtype=self._dtype, device=self._device)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Tensor[...] = -½ Σ_k z_k² - (d/2) ln 2π."""
        return -0.5 * value.pow(2).sum(-1) - 0.5 * self.latent_dim * _LOG_2PI

    def entropy(self) -> torch.Tensor:
        return torch.tensor(0.5 * self.latent_dim * (1.0 + _LOG_2PI), dtype=self._dtype, device=self._device)


class Prior(nn.Module):
    """Contract: ``forward()`` returns the prior Distribution over z with ``event_shape [latent_dim]``.

    ``manifold`` names where z lives: ``euclidean`` (R^d) or ``sphere`` (the unit sphere S^{d-1}); pictures ask it
    (a lattice of normal quantiles means nothing on a sphere), the objectives never do.
    """

    name = "prior"
    manifold = "euclidean"
    _anchor: torch.Tensor  # a buffer

    def __init__(self, latent_dim: int):
        super().__init__()
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        # A buffer tells the prior which device and dtype the model lives on.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def config(self) -> dict:
        return {"name": self.name}


class StandardNormalPrior(Prior):
    """q(z) = N(0, I), the seed's prior."""

    name = "standard-normal"

    def forward(self) -> StandardNormal:
        return StandardNormal(self.latent_dim, dtype=self._anchor.dtype, device=self._anchor.device)


class UniformSpherePrior(Prior):
    """q(z) = the uniform distribution on the unit sphere S^{d-1} (density ``1/|S^{d-1}|`` w.r.t. the surface measure);
    the prior of the fixed-κ von Mises-Fisher posterior."""

    name = "uniform-sphere"
    manifold = "sphere"

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        if self.latent_dim < 2:
            raise ValueError(f"a sphere latent needs latent_dim >= 2, got {latent_dim}")

    def forward(self) -> UniformSphere:
        return UniformSphere(self.latent_dim, dtype=self._anchor.dtype, device=self._anchor.device)


PRIORS: dict[str, type[Prior]] = {StandardNormalPrior.name: StandardNormalPrior,
                                  UniformSpherePrior.name: UniformSpherePrior}


def make_prior(name: str, latent_dim: int) -> Prior:
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)}")
    return PRIORS[name](latent_dim)
