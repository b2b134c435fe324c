"""
ELBO ≤ IWAE ≤ log p(x) on a model where log p(x) is exact
=========================================================

On a linear-Gaussian model, z ~ N(0, I_d) and x | z ~ N(Wz + b, σ² I_D), the marginal is known in closed form:
x ~ N(b, WWᵀ + σ² I_D). So the three quantities bayesvae computes can be put beside the truth:

- the ELBO (eqs. 23-24): the mean of the log importance weights log w = log q(x|z) + log q(z) - log p(z|x);
- the IWAE bound (Burda et al. 2016): logsumexp of K weights minus log K;
- log p(x) itself.

The ELBO is at most log p(x), with equality only when the encoder is the exact posterior; the IWAE bound lies
between them and, in expectation, does not decrease with K. bayesvae's bounds accept any object with
``posterior(x)``, ``likelihood(z)`` and ``prior`` that return ``torch.distributions`` objects: no network needed.
"""

# %%
# The model
# ---------
# The exact posterior of this model is Gaussian; ``shift`` moves its mean away so that the encoder is deliberately
# imperfect and the gaps between the bounds are visible.
import matplotlib.pyplot as plt
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

import bayesvae as bv


class LinearGaussian:
    def __init__(self, D=6, d=3, sigma=0.5, shift=0.1, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, d, generator=g, dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.sigma, self.shift = sigma, shift
        self.cov_post = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + self.W.T @ self.W / sigma**2)
        self.prior = MultivariateNormal(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))

    def posterior(self, x):  # p(z|x): the exact posterior, its mean shifted
        mean = (x - self.b) @ self.W @ self.cov_post.T / self.sigma**2 + self.shift
        return MultivariateNormal(mean, self.cov_post)

    def likelihood(self, z):  # q(x|z)
        return Independent(Normal(z @ self.W.T + self.b, self.sigma), 1)

    def marginal(self):  # q(x), exact
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(len(self.b), dtype=torch.float64)
        return MultivariateNormal(self.b, cov)


model = LinearGaussian()
torch.manual_seed(1)
x = model.marginal().sample((500,))        # 500 examples drawn from the model itself
log_px = model.marginal().log_prob(x)      # exact, Tensor[500]

# %%
# The bounds against K
# --------------------
# Each value is the mean over the 500 examples, in nats; the last column is the mean gap to the exact log p(x).
ks = [1, 2, 5, 10, 50, 200, 1000]
torch.manual_seed(2)
elbo = {k: bv.elbo(model, x, num_samples=k) for k in ks}
iwae = {k: bv.iwae_bound(model, x, num_samples=k) for k in ks}
print(f"log p(x), exact:   {log_px.mean():.4f}")
for k in ks:
    print(f"K = {k:4d}   ELBO {elbo[k].mean():.4f}   IWAE {iwae[k].mean():.4f}   "
          f"log p(x) - IWAE {(log_px - iwae[k]).mean():.4f}")

# %%
# The checks below are part of the tutorial: the site does not build if one fails. The ELBO with the exact KL is the same for every K up to Monte Carlo noise, and the
# gap log p(x) - ELBO is KL(posterior ‖ true posterior), here a known constant, ½ shiftᵀ Σ_post⁻¹ shift.
gap_exact = 0.5 * (torch.full((3,), model.shift, dtype=torch.float64) @ torch.linalg.solve(
    model.cov_post, torch.full((3,), model.shift, dtype=torch.float64)))
gap_elbo = (log_px - elbo[1000]).mean()
print(f"log p(x) - ELBO: {gap_elbo:.4f} nats; the KL to the true posterior in closed form: {gap_exact:.4f}")

for k in ks:
    se = float((iwae[k] - elbo[k]).std() / len(x) ** 0.5)
    assert elbo[k].mean() <= iwae[k].mean() + 3 * se, k           # ELBO ≤ IWAE (up to Monte Carlo error)
    se = float((log_px - iwae[k]).std() / len(x) ** 0.5)
    assert iwae[k].mean() <= log_px.mean() + 3 * se, k             # IWAE ≤ log p(x)
assert abs(gap_elbo - gap_exact) < 0.05
# and the IWAE bound tightens with K: the largest K is closer to log p(x) than K = 1
assert (log_px - iwae[1000]).mean() < (log_px - iwae[1]).mean()

# %%
# The picture
# -----------
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.axhline(float(log_px.mean()), color="black", lw=2, label="log p(x), exact")
ax.plot(ks, [float(elbo[k].mean()) for k in ks], "o-", label="ELBO, K samples")
ax.plot(ks, [float(iwae[k].mean()) for k in ks], "s-", label="IWAE bound, K samples")
ax.set_xscale("log")
ax.set_xlabel("K (importance samples per example)")
ax.set_ylabel("mean over 500 examples, nats")
ax.legend()
fig.tight_layout()

# %%
# :func:`bayesvae.estimate_log_likelihood` is the IWAE bound with a large K (5000 by default), computed in chunks
# in float64, with example i's draws seeded by seed + i; it is what ``bayesvae evaluate`` reports.
estimate = bv.estimate_log_likelihood(model, x[:50], num_samples=5000)
print(f"estimate, K = 5000, first 50 examples: {estimate.mean():.4f}; exact: {log_px[:50].mean():.4f}")
