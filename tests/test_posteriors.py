"""p(z|x) and the KL of eq. (16) against torch.distributions, Monte Carlo (eq. 4) and its closed-form zero."""

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

import bayesvae as bv
from bayesvae.posteriors import LOGVAR_MAX, LOGVAR_MIN


def test_closed_form_kl_matches_torch_kl_divergence():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(64, 10, generator=g) * 2, torch.randn(64, 10, generator=g) * 3
    q = bv.DiagonalNormal(mu, logvar)
    ours = kl_divergence(q, bv.StandardNormal(10))
    ref = kl_divergence(Independent(Normal(mu, (0.5 * logvar).exp()), 1), Independent(Normal(torch.zeros(10), 1.0), 1))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)


def test_closed_form_kl_matches_monte_carlo():
    # eq. (4): KL = E_q[ln q(z) - ln p(z)]. 4e5 samples; tolerance 5 standard errors of the MC mean.
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.3, -0.7, 0.1]])
    q, p = bv.DiagonalNormal(mu, logvar), bv.StandardNormal(3)
    z = q.sample((400_000,))
    terms = (q.log_prob(z) - p.log_prob(z)).double()
    stderr = terms.std() / terms.numel() ** 0.5
    assert abs(terms.mean() - kl_divergence(q, p).double()) < 5 * stderr


def test_posterior_log_prob_matches_torch_normal():
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    z = torch.randn(7, 5, 4)
    ref = Independent(Normal(mu, (0.5 * logvar).exp()), 1).log_prob(z)
    torch.testing.assert_close(bv.DiagonalNormal(mu, logvar).log_prob(z), ref, atol=1e-4, rtol=1e-5)


def test_prior_log_prob_matches_torch_normal():
    z = torch.randn(3, 6, 8)
    ref = Independent(Normal(torch.zeros(8), 1.0), 1).log_prob(z)
    torch.testing.assert_close(bv.StandardNormal(8).log_prob(z), ref, atol=1e-5, rtol=0)


def test_kl_is_never_negative_on_random_and_extreme_inputs():
    g = torch.Generator().manual_seed(0)
    d = 10
    mu = torch.cat([torch.randn(50_000, d, generator=g) * 10, torch.randn(50_000, d, generator=g) * 1e-4])
    logvar = torch.cat([torch.rand(50_000, d, generator=g) * (LOGVAR_MAX - LOGVAR_MIN) + LOGVAR_MIN,
                        torch.randn(50_000, d, generator=g) * 1e-6])
    mu[:10], logvar[:10] = 0.0, torch.tensor([LOGVAR_MIN, LOGVAR_MAX]).repeat(5)[:, None].expand(10, d)
    kl = kl_divergence(bv.DiagonalNormal(mu, logvar), bv.StandardNormal(d))
    assert torch.isfinite(kl).all()
    assert kl.min() >= -1e-6 * d


def test_kl_is_exactly_zero_at_the_prior():
    kl = kl_divergence(bv.DiagonalNormal(torch.zeros(4, 7), torch.zeros(4, 7)), bv.StandardNormal(7))
    assert torch.equal(kl, torch.zeros(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_encoder_outputs_are_clamped_and_stay_finite(dtype):
    params = torch.tensor([[0.5, -0.5, 1e4, -1e4]], dtype=dtype)
    q = bv.DiagonalGaussian()(params)
    assert q.logvar.max().item() == LOGVAR_MAX and q.logvar.min().item() == LOGVAR_MIN
    kl = kl_divergence(q, bv.StandardNormal(2, dtype=dtype))
    assert kl.dtype == torch.float32 and torch.isfinite(kl).all()
    assert torch.isfinite(q.rsample((3,)).float()).all()


def test_rsample_is_reparameterised():
    mu = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    bv.DiagonalNormal(mu, logvar).rsample((4,)).sum().backward()
    assert mu.grad is not None and torch.equal(mu.grad, torch.full((2, 3), 4.0))
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        bv.DiagonalNormal(torch.zeros(2, 3), torch.zeros(2, 4))


def test_soft_clamp_is_the_identity_inside_and_bounded_outside():
    from bayesvae.posteriors import soft_clamp
    inside = torch.linspace(-20.0, 10.0, 3001)
    assert torch.equal(soft_clamp(inside), inside)  # trained models' log-variances are untouched, bit for bit
    far = torch.tensor([-1e6, -100.0, -35.0, 25.0, 100.0, 1e6])
    y = soft_clamp(far)
    assert (y <= LOGVAR_MAX).all() and (y >= LOGVAR_MIN).all() and torch.isfinite(y).all()
    # value and slope are continuous at the joins (finite differences across them)
    for join in (10.0, -20.0):
        x = torch.tensor([join - 1e-3, join + 1e-3], dtype=torch.float64)
        slope = (soft_clamp(x)[1] - soft_clamp(x)[0]) / 2e-3
        assert abs(float(slope) - 1.0) < 1e-3


@pytest.mark.parametrize("raw", [25.0, 40.0, -45.0])
def test_a_log_variance_pushed_past_the_bound_is_pulled_back(raw):
    """Issue 13.7: a hard clamp at 20 gave a KL of 1e8 nats with gradient exactly 0: the unit could never return.
    Here the KL's gradient reaches the raw output, and Adam on the KL alone brings it back inside [-20, 10]."""
    mu = torch.zeros(1, 1)
    logvar = torch.tensor([[raw]], requires_grad=True)
    kl = kl_divergence(bv.DiagonalGaussian()(torch.cat([mu, logvar], -1)), bv.StandardNormal(1)).sum()
    kl.backward()
    assert logvar.grad is not None and float(logvar.grad) != 0.0  # a hard clamp gives exactly 0
    assert (float(logvar.grad) > 0) == (raw > 0)  # descent moves it towards the range
    opt = torch.optim.Adam([logvar], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        kl_divergence(bv.DiagonalGaussian()(torch.cat([mu, logvar], -1)), bv.StandardNormal(1)).sum().backward()
        opt.step()
    assert -20.0 < float(logvar.detach()) < 10.0
