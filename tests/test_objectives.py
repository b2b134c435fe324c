"""Bounds from the log importance weights, checked on a linear-Gaussian model whose log p(x) is exact."""

import math
import subprocess
import sys

import pytest
import torch

import bayesvae as bv
from linear_gaussian import LinearGaussian


def test_exact_posterior_makes_every_bound_exact():
    # With p(z|x) the true posterior, log w = log p(x) for every z, so any K gives the exact value.
    m = LinearGaussian()
    x = m.data(16)
    exact = m.marginal().log_prob(x)
    torch.manual_seed(0)
    for k in (1, 2, 10, 100):
        torch.testing.assert_close(bv.elbo(m, x, k, kl="sampled"), exact, atol=1e-4, rtol=0)
        torch.testing.assert_close(bv.iwae_bound(m, x, k), exact, atol=1e-4, rtol=0)
        torch.testing.assert_close(bv.estimate_log_likelihood(m, x, k, chunk_size=7), exact, atol=1e-4, rtol=0)


def test_elbo_with_closed_form_kl_agrees_with_exact_value_in_expectation():
    # Analytic KL (MVN-MVN is registered) plus a K-sample reconstruction: unbiased for log p(x).
    m = LinearGaussian()
    x = m.data(8)
    torch.manual_seed(0)
    terms = bv.elbo_terms(m, x, 20_000, kl="analytic")
    torch.testing.assert_close(terms.elbo, m.marginal().log_prob(x), atol=0.05, rtol=0)
    assert (terms.kl > 0).all()


def test_bounds_are_ordered_and_tighten_with_k_for_a_worse_posterior():
    m = LinearGaussian(posterior_shift=0.4, posterior_scale=1.6)
    x = m.data(400)
    exact = m.marginal().log_prob(x).mean()
    torch.manual_seed(0)
    e = bv.elbo(m, x, 1, kl="sampled").mean()
    bounds = [bv.iwae_bound(m, x, k).mean() for k in (1, 5, 50, 500)]
    # averages over 400 examples; the gaps between consecutive K are > 0.05 nats here, far above MC noise
    assert abs(bounds[0] - e) < 0.2
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False)), bounds
    assert bounds[-1] < exact


def test_vae_class_with_orthogonal_linear_model_is_exact():
    # W = s Q with orthonormal columns gives a diagonal exact posterior, so bv.VAE with its own heads is exact.
    torch.manual_seed(0)
    D, d, s, sigma = 6, 2, 1.5, 0.5
    Q, _ = torch.linalg.qr(torch.randn(D, d, dtype=torch.float64))
    W, b = s * Q, torch.randn(D, dtype=torch.float64)
    post_var = 1.0 / (1.0 + s**2 / sigma**2)
    enc, dec = torch.nn.Linear(D, 2 * d).double(), torch.nn.Linear(d, D).double()
    with torch.no_grad():
        enc.weight.zero_()
        enc.weight[:d] = post_var * W.T / sigma**2
        enc.bias.zero_()
        enc.bias[:d] = -(post_var * W.T / sigma**2) @ b
        enc.bias[d:] = math.log(post_var)
        dec.weight.copy_(W)
        dec.bias.copy_(b)
    model = bv.VAE(enc, dec, bv.GaussianFixedVariance(sigma), latent_dim=d).double()
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(D, dtype=torch.float64))
    x = marginal.sample((32,))
    exact = marginal.log_prob(x)
    torch.testing.assert_close(bv.elbo(model, x, 3, kl="sampled"), exact, atol=1e-4, rtol=0)
    torch.testing.assert_close(bv.estimate_log_likelihood(model, x, 50), exact, atol=1e-4, rtol=0)


def test_loss_is_negative_for_concentrated_continuous_data_and_that_is_correct():
    # Data with σ = 0.01 have densities far above 1: log p(x) > 0, so the loss -ELBO = -log p(x) < 0 exactly.
    m = LinearGaussian(D=10, d=2, sigma=0.01, seed=3, w_scale=0.01)
    x = m.data(64)
    loss = -bv.elbo(m, x, 1, kl="sampled").mean()
    assert loss < 0
    torch.testing.assert_close(loss, -m.marginal().log_prob(x).mean(), atol=1e-4, rtol=0)


def test_loss_is_summed_over_dimensions_and_averaged_over_the_batch():
    m = LinearGaussian()
    x = m.data(10)
    torch.manual_seed(0)
    loss = -bv.elbo(m, x, 1, kl="sampled").mean()
    loss_doubled = -bv.elbo(m, torch.cat([x, x]), 1, kl="sampled").mean()
    torch.testing.assert_close(loss, loss_doubled, atol=1e-6, rtol=0)
    # summed over data dimensions: the per-example value is a log-density of all D dimensions, not a mean
    torch.testing.assert_close(loss, -m.marginal().log_prob(x).mean(), atol=1e-4, rtol=0)


def _mlp_model():
    return bv.build_model(bv.ModelConfig(data_shape=(6,), latent_dim=2, hidden=(8,)))


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_bad_sample_counts_raise(k):
    x = torch.rand(4, 6).round()
    for fn in (bv.elbo, bv.iwae_bound, bv.estimate_log_likelihood, bv.log_importance_weights):
        with pytest.raises(ValueError, match="num_samples"):
            fn(_mlp_model(), x, k)


def test_wrong_shapes_raise_with_a_useful_message():
    model = _mlp_model()
    with pytest.raises(ValueError, match="data shape"):
        bv.elbo(model, torch.rand(4, 1, 6).round())
    with pytest.raises(ValueError, match="batch"):
        bv.elbo(model, torch.rand(6))
    with pytest.raises(ValueError, match="z must have shape"):
        model.likelihood(torch.zeros(3, 5))


def test_argument_checks_survive_python_O():
    code = (
        "import torch, bayesvae as bv\n"
        "m = bv.build_model(bv.ModelConfig(data_shape=(6,), latent_dim=2, hidden=(8,)))\n"
        "for call in (lambda: bv.elbo(m, torch.zeros(2, 6), 0), lambda: bv.GaussianFixedVariance(-1.0),\n"
        "             lambda: bv.estimate_log_likelihood(m, torch.zeros(2, 6), -3), "
        "lambda: bv.elbo(m, torch.zeros(2, 5))):\n"
        "    try:\n        call()\n    except ValueError:\n        pass\n"
        "    else:\n        raise SystemExit('no ValueError')\n"
        "assert False, 'asserts are on'\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _optimal_sigma_model(seed=0):
    torch.manual_seed(seed)
    model = bv.build_model(bv.ModelConfig(data_shape=(6,), latent_dim=2, hidden=(16,), likelihood="gaussian-shared",
                                          likelihood_options={"optimal": True}))
    with torch.no_grad():  # a running σ that is not the batch's optimum, as after some training
        model.likelihood_head.mse_average.fill_(0.5)
        model.likelihood_head.average_weight.fill_(1.0)
        model.likelihood_head.log_sigma.fill_(0.5 * math.log(0.5))
    return model


@pytest.mark.parametrize("bound", ["elbo", "iwae_bound"])
def test_bounds_are_pure_and_mode_independent_for_the_optimal_sigma(bound):
    """Issue 13.4: in training mode σ used to be fitted to the very batch being scored (iwae_bound -2.06 against
    -17.24 in eval mode) and the running buffer overwritten. A bound is a bound: the same value in both modes, and
    no state changes."""
    model = _optimal_sigma_model()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1)) * 0.05
    fn = getattr(bv, bound)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    values = {}
    for mode in (True, False):
        model.train(mode)
        torch.manual_seed(5)
        values[mode] = fn(model, x, num_samples=4)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"{bound} changed the model's state"
    torch.testing.assert_close(values[True], values[False], rtol=0, atol=0)
    # and it is the density with the running σ: the reconstruction term of one sample at the posterior's draw
    model.eval()
    torch.manual_seed(5)
    q = model.posterior(x)
    z = q.rsample((4,))
    from torch.distributions import Normal
    log_px = Normal(model.decode(z), math.sqrt(0.5)).log_prob(x).sum(-1)
    log_w = log_px + model.prior.log_prob(z) - q.log_prob(z)
    if bound == "elbo":  # the ELBO's KL in closed form (eq. 16), here from torch.distributions
        kl = torch.distributions.kl_divergence(Normal(q.loc, q.stddev), Normal(0.0, 1.0)).sum(-1)
        want = log_px.mean(0) - kl
    else:
        want = torch.logsumexp(log_w, 0) - math.log(4)
    torch.testing.assert_close(values[False], want, rtol=0, atol=1e-4)


def test_training_objective_fits_sigma_only_in_training_mode():
    model = _optimal_sigma_model()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1)) * 0.05
    from bayesvae.objectives import TrainingObjective
    objective = TrainingObjective()
    model.eval()
    objective(model, x)  # validation: nothing fitted
    assert float(model.likelihood_head.average_weight) == 1.0
    model.train()
    objective(model, x)
    assert float(model.likelihood_head.average_weight) == pytest.approx(1.0)  # 0.9·1 + 0.1
    assert float(model.likelihood_head.mse_average) != 0.5
