"""A model whose log p(x) is exact: z ~ N(0, I_d), x | z ~ N(Wz + b, σ² I_D), so x ~ N(b, WWᵀ + σ² I).

Used by the objective and estimator tests as an independent reference (closed forms from
torch.distributions.MultivariateNormal, never from bayesvae's own code).
"""

import torch
from torch.distributions import Independent, MultivariateNormal, Normal


class LinearGaussian:
    """Any object with ``posterior(x)``, ``likelihood(z)`` and ``prior`` works with the bounds and estimators."""

    def __init__(self, D=5, d=3, sigma=0.5, seed=0, posterior_shift=0.0, posterior_scale=1.0, w_scale=1.0,
                 dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, d, generator=g, dtype=dtype) * w_scale
        self.b = torch.randn(D, generator=g, dtype=dtype)
        self.sigma, self.d, self.D = sigma, d, D
        cov_post = torch.linalg.inv(torch.eye(d, dtype=dtype) + self.W.T @ self.W / sigma**2)
        self.cov_post = cov_post
        self.shift, self.scale = posterior_shift, posterior_scale
        self.prior = MultivariateNormal(torch.zeros(d, dtype=dtype), torch.eye(d, dtype=dtype))

    def posterior(self, x):
        """The exact posterior (or, with shift/scale, a deliberately worse one)."""
        mean = (x - self.b) @ self.W @ self.cov_post.T / self.sigma**2 + self.shift
        return MultivariateNormal(mean, self.cov_post * self.scale**2)

    def likelihood(self, z):
        return Independent(Normal(z @ self.W.T + self.b, self.sigma), 1)

    def marginal(self):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.D, dtype=self.W.dtype)
        return MultivariateNormal(self.b, cov)

    def data(self, n, seed=1):
        torch.manual_seed(seed)
        return self.marginal().sample((n,))
