"""The fixed-κ von Mises-Fisher posterior and the uniform prior on S^{d-1}, checked against references that share
no code with bayesvae.sphere: 1-D numerical integration (scipy.integrate.quad) of the density of the angle,
Kolmogorov-Smirnov tests, Monte Carlo means and mpmath's Bessel functions. Every statistical test fixes its seed
and states its tolerance."""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import kl_divergence

import bayesvae as bv
from bayesvae.cli import main
from bayesvae.errors import ConfigError
from bayesvae.sphere import (
    UniformSphere,
    VonMisesFisher,
    log_bessel_iv,
    log_sphere_area,
    log_vmf_normalizer,
    mean_resultant_length,
    sample_vmf_w,
    vmf_kl_to_uniform,
)

DIMS, KAPPAS = (2, 3, 10, 64), (1.0, 10.0, 100.0, 1000.0)


# ---------------------------------------------------------------------------------- independent references
def _angle_density(d: float, kappa: float):
    """Unnormalised density of θ = arccos w on [0, π]: exp(κ(cos θ - 1)) sin^{d-2} θ (w's density
    ∝ exp(κw)(1-w²)^{(d-3)/2} after dw = -sin θ dθ; the factor exp(-κ) keeps large κ finite)."""
    return lambda t: math.exp(kappa * (math.cos(t) - 1.0)) * math.sin(t) ** (d - 2)


def _quad(f, a, b):
    return integrate.quad(f, a, b, epsabs=0.0, epsrel=1e-12, limit=400)[0]


def _pieces(d, kappa):
    """Integration breakpoints: the mass sits within a few widths sqrt((d-1)/κ)-ish of the mode."""
    width = math.sqrt((d + 1.0) / kappa) if kappa > 0 else math.pi
    return [b for b in (0.0, 0.5 * width, width, 3 * width, 10 * width, math.pi) if b <= math.pi] + [math.pi]


def _integrate(f, d, kappa):
    cuts = sorted(set(_pieces(d, kappa)))
    return sum(_quad(f, a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True))


def numerical_kl(d: int, kappa: float) -> float:
    """KL(vMF || uniform) = KL of the marginals of θ (given θ both are uniform on the same sub-sphere):
    ∫ f log(f/g) with f ∝ exp(κ cos θ) sin^{d-2} θ and g ∝ sin^{d-2} θ, both normalised numerically."""
    g = _angle_density(d, kappa)
    z_f = _integrate(g, d, kappa)
    mean_cos = _integrate(lambda t: math.cos(t) * g(t), d, kappa) / z_f
    z_g = _integrate(lambda t: math.sin(t) ** (d - 2), d, 0.0)
    # log f/g = κ cos θ - (κ + log z_f) + log z_g
    return kappa * mean_cos - kappa - math.log(z_f) + math.log(z_g)


def numerical_mean_cos(d, kappa):
    g = _angle_density(d, kappa)
    return _integrate(lambda t: math.cos(t) * g(t), d, kappa) / _integrate(g, d, kappa)


# ---------------------------------------------------------------------------------------------- special functions
@pytest.mark.parametrize("order", [0.0, 0.5, 4.0, 31.0, 255.0])
@pytest.mark.parametrize("kappa", [0.1, 1.0, 30.0, 1000.0, 1e4])
def test_log_bessel_matches_mpmath(order, kappa):
    mpmath.mp.dps = 40
    ref = float(mpmath.log(mpmath.besseli(order, kappa)))
    assert log_bessel_iv(order, kappa) == pytest.approx(ref, rel=1e-12, abs=1e-10)


def test_nothing_is_nan_or_inf_for_d_2_to_512_and_kappa_0_1_to_1e4():
    kappas = np.logspace(-1, 4, 21)
    for d in range(2, 513):
        for k in kappas:
            k = float(k)
            log_c, a, kl = log_vmf_normalizer(d, k), mean_resultant_length(d, k), vmf_kl_to_uniform(d, k)
            assert math.isfinite(log_c) and 0.0 < a < 1.0 and math.isfinite(kl) and kl > -1e-9, (d, k)
    g = torch.Generator().manual_seed(0)
    for d in (2, 3, 17, 128, 512):
        for k in (0.1, 1.0, 1e2, 1e4):
            mu = torch.nn.functional.normalize(torch.randn(8, d, generator=g), dim=-1)
            z = VonMisesFisher(mu, k).rsample((16,), generator=g)
            assert torch.isfinite(z).all(), (d, k)


def test_density_integrates_to_one_on_the_circle_and_the_2_sphere():
    # d = 2: ∫_0^{2π} C_2(κ) exp(κ cos θ) dθ = 1; d = 3: 2π ∫_0^π C_3(κ) exp(κ cos θ) sin θ dθ = 1.
    for kappa in (0.1, 3.0, 50.0, 2000.0):
        c2 = log_vmf_normalizer(2, kappa) + kappa
        circle = 2.0 * _integrate(_angle_density(2, kappa), 2, kappa)
        assert math.exp(c2) * circle == pytest.approx(1.0, rel=1e-9)
        c3 = log_vmf_normalizer(3, kappa) + kappa
        sphere = 2.0 * math.pi * _integrate(_angle_density(3, kappa), 3, kappa)
        assert math.exp(c3) * sphere == pytest.approx(1.0, rel=1e-9)
    assert math.exp(log_sphere_area(2)) == pytest.approx(2 * math.pi)
    assert math.exp(log_sphere_area(3)) == pytest.approx(4 * math.pi)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("kappa", (0.1, *KAPPAS, 1e4))
def test_kl_constant_matches_numerical_integration(d, kappa):
    assert vmf_kl_to_uniform(d, kappa) == pytest.approx(numerical_kl(d, kappa), abs=1e-6)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("kappa", KAPPAS)
def test_mean_resultant_length_matches_integration_and_samples(d, kappa):
    a = mean_resultant_length(d, kappa)
    assert a == pytest.approx(numerical_mean_cos(d, kappa), abs=1e-9)
    w, _ = sample_vmf_w(d, kappa, (20_000,), generator=torch.Generator().manual_seed(1))
    se = float(w.std()) / math.sqrt(w.numel())
    assert abs(float(w.mean()) - a) < 5 * se  # 5 standard errors of the Monte Carlo mean


# ------------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("kappa", KAPPAS)
def test_w_matches_its_density_kolmogorov_smirnov(d, kappa):
    """KS test at the 1 % level: 2000 draws of w (seed fixed) against the CDF of ∝ exp(κw)(1-w²)^{(d-3)/2},
    integrated numerically between consecutive sorted draws (in θ = arccos w, where the density is smooth)."""
    n = 2000
    w, omw = sample_vmf_w(d, kappa, (n,), generator=torch.Generator().manual_seed(1234 + d))
    # θ from 1 - w (exact near w = 1): θ = 2 asin(sqrt((1-w)/2)).
    theta = np.sort(2.0 * np.arcsin(np.sqrt(np.clip(omw.numpy() / 2.0, 0.0, 1.0))))[::-1]  # w ascending
    g = _angle_density(d, kappa)
    edges = np.concatenate([[math.pi], theta, [0.0]])
    pieces = np.array([_quad(g, b, a) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    cdf = np.cumsum(pieces)[:-1] / pieces.sum()  # P(w <= w_(i)) at each sorted draw
    i = np.arange(1, n + 1)
    stat = max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n))
    p_value = stats.kstwo.sf(stat, n)
    assert p_value > 0.01, f"KS statistic {stat:.4f}, p = {p_value:.4g}"


def test_samples_have_unit_norm_and_their_angle_does_not_depend_on_mu():
    g = torch.Generator().manual_seed(0)
    for d in (2, 3, 10, 64, 512):
        for kappa in (0.1, 10.0, 1e4):
            mu = torch.nn.functional.normalize(torch.randn(32, d, generator=g), dim=-1)
            z = VonMisesFisher(mu, kappa).rsample((8,), generator=g)
            assert (z.norm(dim=-1) - 1).abs().max() < 1e-5, (d, kappa)
    # The same generator state gives the same w = <z, μ> for any μ: w carries no parameter.
    mu1 = torch.nn.functional.normalize(torch.randn(5, 7, generator=g), dim=-1)
    mu2 = torch.nn.functional.normalize(torch.randn(5, 7, generator=g), dim=-1)
    z1 = VonMisesFisher(mu1, 30.0).rsample((4,), generator=torch.Generator().manual_seed(9))
    z2 = VonMisesFisher(mu2, 30.0).rsample((4,), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close((z1 * mu1).sum(-1), (z2 * mu2).sum(-1), atol=1e-6, rtol=0)


def test_reparameterised_gradient_flows_through_mu():
    raw = torch.randn(6, 5, requires_grad=True)
    q = bv.VonMisesFisherPosterior(5, kappa=20.0)(raw)
    target = torch.nn.functional.normalize(torch.ones(5), dim=0)
    # d/dμ E[<z, t>] = A_d(κ) t (projected on the sphere's tangent): sampled gradient vs the analytic one.
    torch.manual_seed(0)
    (q.rsample((20_000,)) @ target).mean(0).sum().backward()
    raw2 = raw.detach().clone().requires_grad_(True)
    mean = mean_resultant_length(5, 20.0) * torch.nn.functional.normalize(raw2, dim=-1)
    (mean @ target).sum().backward()
    torch.testing.assert_close(raw.grad, raw2.grad, atol=2e-2, rtol=0)


# ----------------------------------------------------------------------------------------------------- the KL
@pytest.mark.parametrize("d,kappa", [(2, 1.0), (3, 10.0), (10, 100.0), (64, 1000.0)])
def test_sampled_and_closed_form_kl_agree(d, kappa):
    g = torch.Generator().manual_seed(3)
    mu = torch.nn.functional.normalize(torch.randn(4, d, generator=g, dtype=torch.float64), dim=-1)
    q, p = VonMisesFisher(mu, kappa), UniformSphere(d, dtype=torch.float64)
    closed = kl_divergence(q, p)
    assert closed.shape == (4,)
    z = q.rsample((50_000,), generator=g)
    terms = q.log_prob(z) - p.log_prob(z)
    se = terms.std(0) / math.sqrt(terms.shape[0])
    assert ((terms.mean(0) - closed).abs() < 5 * se + 1e-12).all()  # 5 standard errors
    entropy_mc = -q.log_prob(z).mean(0)
    assert ((entropy_mc - q.entropy()).abs() < 5 * se + 1e-12).all()
    assert float(p.entropy()) == pytest.approx(math.log(2 * math.pi ** (d / 2) / math.gamma(d / 2)), rel=1e-6)


def test_uniform_prior_samples_are_uniform_on_the_sphere():
    torch.manual_seed(0)
    z = UniformSphere(3).sample((200_000,)).double()
    assert (z.norm(dim=-1) - 1).abs().max() < 1e-5
    # Archimedes: each coordinate of a uniform point on S^2 is uniform on [-1, 1]; KS at the 1 % level.
    assert stats.kstest(z[:5000, 2].numpy(), "uniform", args=(-1, 2)).pvalue > 0.01
    assert z.mean(0).abs().max() < 5 / math.sqrt(3 * 200_000)


# ------------------------------------------------------------------------------------------------- in the model
def _digits_vmf_model(likelihood="bernoulli", kappa=20.0, d=4, **options):
    config = bv.ModelConfig(data_shape=(1, 8, 8), latent_dim=d, hidden=(64,), likelihood=likelihood,
                            posterior="vmf", posterior_options={"kappa": kappa}, likelihood_options=options)
    return bv.build_model(config)


def test_config_pairs_vmf_with_the_uniform_prior_and_validates():
    config = bv.ModelConfig(data_shape=(3,), latent_dim=4, posterior="vmf", posterior_options={"kappa": 5})
    assert config.prior == "uniform-sphere"
    assert bv.ModelConfig(data_shape=(3,)).prior == "standard-normal"
    for bad in ({}, {"kappa": 0}, {"kappa": -1.0}, {"kappa": 2e4}, {"kappa": float("nan")}, {"kappa": 5, "x": 1}):
        with pytest.raises(ConfigError):
            bv.ModelConfig(data_shape=(3,), latent_dim=4, posterior="vmf", posterior_options=bad)
    with pytest.raises(ConfigError, match="same space"):
        bv.ModelConfig(data_shape=(3,), latent_dim=4, posterior="vmf", posterior_options={"kappa": 5},
                       prior="standard-normal")
    with pytest.raises(ConfigError, match="d >= 2"):
        bv.ModelConfig(data_shape=(3,), latent_dim=1, posterior="vmf", posterior_options={"kappa": 5})


@pytest.mark.parametrize("likelihood,options", [("bernoulli", {}), ("gaussian-fixed", {"sigma": 0.3}),
                                                ("gaussian-learned", {}), ("gaussian-shared", {})])
def test_every_likelihood_and_objective_runs_unchanged(likelihood, options):
    torch.manual_seed(0)
    model = _digits_vmf_model(likelihood, **options)
    x = torch.rand(6, 1, 8, 8)
    if likelihood == "bernoulli":
        x = (x > 0.5).float()
    closed = bv.elbo_terms(model, x, 3, kl="analytic")
    sampled = bv.elbo_terms(model, x, 3, kl="sampled")
    torch.testing.assert_close(closed.kl, torch.full((6,), vmf_kl_to_uniform(4, 20.0), dtype=torch.float32))
    assert torch.isfinite(sampled.kl).all() and torch.isfinite(bv.iwae_bound(model, x, 5)).all()
    from bayesvae.objectives import TrainingObjective
    for objective in (TrainingObjective("elbo", 2, kl_warmup_epochs=2.0), TrainingObjective("iwae", 3)):
        out = objective(model, x, 0.5)
        (-out["objective"].mean()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    ll = bv.estimate_log_likelihood(model, x, 50, seed=0)
    assert torch.isfinite(ll).all()


def test_generation_draws_from_the_uniform_prior():
    model = _digits_vmf_model()
    torch.manual_seed(0)
    z = model.prior.sample((10_000,))
    assert (z.norm(dim=-1) - 1).abs().max() < 1e-5 and z.mean(0).abs().max() < 0.05
    x = model.sample(5)
    assert x.shape == (5, 1, 8, 8) and ((x >= 0) & (x <= 1)).all()


@pytest.fixture(scope="module")
def vmf_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vmf") / "run"
    code = main(["train", "--epochs", "4", "--latent-dim", "3", "--posterior", "vmf", "--kappa", "20", "--hidden",
                 "128", "--out", str(out), "--report-samples", "0", "--seed", "1"])
    assert code == 0
    return out


def test_log_likelihood_lies_between_the_elbo_and_a_larger_k_estimate(vmf_run):
    run = bv.runs.load_run(vmf_run)
    x = run.prepared().test[:60]
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([bv.elbo(run.model, x, 1) for _ in range(50)]).mean(0).double()  # E[ELBO], 50 draws
    ll_100 = bv.estimate_log_likelihood(run.model, x, 100, seed=1)
    ll_2000 = bv.estimate_log_likelihood(run.model, x, 2000, seed=2)
    # Means over 60 examples: ELBO < IWAE-100 < IWAE-2000 (the gaps are nats; Monte Carlo noise is far smaller).
    assert float(elbo.mean()) < float(ll_100.mean()) < float(ll_2000.mean())
    assert float(ll_2000.mean()) - float(ll_100.mean()) < float(ll_100.mean()) - float(elbo.mean())


def test_checkpoint_load_and_resume_of_a_vmf_run(vmf_run, tmp_path):
    state = json.loads((vmf_run / "run.json").read_text())
    assert state["model_config"]["posterior"] == "vmf" and state["model_config"]["prior"] == "uniform-sphere"
    assert state["kl_bound"]["nats"] == pytest.approx(vmf_run_kl := vmf_kl_to_uniform(3, 20.0))
    model = bv.load(vmf_run)
    assert model.posterior_head.kappa == 20.0 and vmf_run_kl > 0
    # Resume: 2 epochs + 2 more reproduce the 4-epoch run exactly.
    part = tmp_path / "part"
    args = ["--latent-dim", "3", "--posterior", "vmf", "--kappa", "20", "--hidden", "128", "--report-samples", "0",
            "--seed", "1"]
    assert main(["train", "--epochs", "2", "--out", str(part), *args]) == 0
    assert main(["train", "--resume", str(part), "--epochs-override", "4", "--report-samples", "0"]) == 0
    full = [json.loads(line) for line in (vmf_run / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["valid_loss"] for r in resumed] == [r["valid_loss"] for r in full]


def test_evaluate_a_vmf_run(vmf_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(vmf_run), "--samples", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kl_per_dimension_nats"] is None  # the vMF KL does not split by dimension
    assert result["kl_nats"] == pytest.approx(vmf_kl_to_uniform(3, 20.0), rel=1e-6)
    assert result["log_likelihood_nats"] > result["elbo_nats"] and result["mutual_information_nats"] > 0
    assert main(["evaluate", str(vmf_run), "--samples", "10"]) == 0
    assert "vMF's KL is one constant" in capsys.readouterr().out


def test_cli_refuses_kappa_without_vmf_and_vmf_without_kappa(tmp_path, capsys):
    assert main(["train", "--kappa", "5", "--out", str(tmp_path / "a")]) == 2
    assert "--posterior vmf" in capsys.readouterr().err
    assert main(["train", "--posterior", "vmf", "--out", str(tmp_path / "b")]) == 2
    assert "--kappa" in capsys.readouterr().err
    assert main(["train", "--posterior", "vmf", "--kappa", "5", "--posterior-bn", "tau=0.5",
                 "--out", str(tmp_path / "c")]) == 2
    assert main(["train", "--posterior", "vmf", "--kappa", "5", "--free-bits", "0.1", "--epochs", "1",
                 "--out", str(tmp_path / "d")]) == 2
    assert "per-dimension" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abcd")
