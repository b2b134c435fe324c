"""VAE + BN (batch-normalised posterior parameters) and the collapse diagnostics: the KL floors each form
guarantees, checked on arbitrary encoder outputs and on a run where the plain VAE collapses; evaluation that does
not depend on the batch; free bits; the mutual-information estimate against a closed form."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import kl_divergence

import bayesvae as bv
from bayesvae import runs
from bayesvae.cli import main
from bayesvae.config import TrainConfig
from bayesvae.errors import ConfigError
from bayesvae.objectives import TrainingObjective


def _raw(batch=256, d=6, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    # Collapsed-looking raw outputs: a small spread of μ around an offset, any σ.
    loc = 5.0 + 0.1 * torch.randn(batch, d, generator=g)
    other = scale * torch.randn(batch, d, generator=g)
    return torch.cat([loc, other], -1)


@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_gamma_form_batch_kl_is_at_least_d_gamma_squared_over_two(gamma):
    head = bv.DiagonalGaussian(6, bn_gamma=gamma).train()
    with torch.no_grad():
        head.shift.copy_(torch.linspace(-1, 1, 6))
    with head.fitting():  # what the training objective does: batch statistics
        q = head(_raw())
    # In a training batch: mean of μ_j² = γ² Var/(Var + ε) + β_j² (BatchNorm's biased batch variance).
    var = _raw()[:, :6].var(0, unbiased=False)
    expected = gamma ** 2 * var / (var + bv.posteriors.BN_EPS) + head.shift.detach() ** 2
    torch.testing.assert_close(q.loc.pow(2).mean(0), expected, rtol=1e-4, atol=1e-6)
    kl = kl_divergence(q, bv.StandardNormal(6)).mean()
    assert kl >= head.kl_bound() * (1 - 1e-3)
    assert head.kl_bound() == pytest.approx(6 * gamma ** 2 / 2)


@pytest.mark.parametrize("tau", [0.2, 0.5, 0.9])
def test_tau_form_keeps_the_second_moment_and_its_kl_floor(tau):
    head = bv.DiagonalGaussian(6, bn_tau=tau).train()
    with torch.no_grad():
        head.theta.fill_(0.7)
    with head.fitting():
        q = head(_raw(seed=1))
    s = 1 / (1 + math.exp(-0.7))
    g_mu, g_sigma = tau + (1 - tau) * s, (1 - tau) * (1 - s)
    assert head.scales() == pytest.approx((g_mu, g_sigma))
    second = q.loc.pow(2).mean(0) + q.variance.mean(0)  # E[μ² + σ²] per dimension: the prior's 1 ...
    raw = _raw(seed=1)
    shrink = [(v / (v + bv.posteriors.BN_EPS)) for v in (raw[:, :6].var(0, unbiased=False),
                                                         raw[:, 6:].var(0, unbiased=False))]
    # ... up to BatchNorm's ε: γ_μ² Var/(Var + ε) + γ_σ² Var'/(Var' + ε)
    torch.testing.assert_close(second, g_mu * shrink[0] + g_sigma * shrink[1], rtol=1e-4, atol=0)
    assert (second - 1).abs().max() < 2e-3
    kl = kl_divergence(q, bv.StandardNormal(6)).mean()
    assert kl >= -0.5 * 6 * math.log(g_sigma) * (1 - 1e-3) >= head.kl_bound() * (1 - 1e-3)
    assert head.kl_bound() == pytest.approx(-3 * math.log(1 - tau))


@pytest.mark.parametrize("eps,holds", [(1e-5, False), (None, True)])
def test_gamma_floor_survives_an_optimiser_that_minimises_the_kl(eps, holds, monkeypatch):
    """Adam on the KL alone (the gradient a collapsing decoder leaves): the γ form's floor d γ²/2 must hold. With
    BatchNorm's default ε = 1e-5 it does not: the KL's gradient through Var/(Var + ε) drives the raw variance of μ
    below ε (as on PTB, where the KL fell from 5.76 to 0.001 nats); with bayesvae's ε it holds."""
    if eps is not None:
        monkeypatch.setattr(bv.posteriors, "BN_EPS", eps)
    torch.manual_seed(0)
    d, gamma = 8, 0.6
    encoder = torch.nn.Linear(16, 2 * d)
    with torch.no_grad():
        encoder.weight.mul_(0.05)  # a small spread of raw μ at the start, as an LSTM encoder's on sentences
    head = bv.DiagonalGaussian(d, bn_gamma=gamma).train()
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randn(64, 16)
    for _ in range(500):
        with head.fitting():
            kl = kl_divergence(head(encoder(x)), bv.StandardNormal(d)).mean()
        opt.zero_grad()
        kl.backward()
        opt.step()
    kl = float(kl.detach())
    assert (kl >= 0.99 * head.kl_bound()) is holds, kl


def test_first_training_batch_sets_the_running_statistics():
    head = bv.DiagonalGaussian(4, bn_gamma=1.0).train()
    raw = _raw(batch=32, d=4)
    with head.fitting():
        head(raw)
    # BatchNorm keeps the unbiased variance; the first batch replaces the initial (0, 1) entirely.
    torch.testing.assert_close(head.mean_norm.running_mean, raw[:, :4].mean(0))
    torch.testing.assert_close(head.mean_norm.running_var, raw[:, :4].var(0, unbiased=True))


def test_bn_options_are_validated():
    for bad in ({"bn_gamma": 0}, {"bn_gamma": -1}, {"bn_tau": 1.0}, {"bn_tau": 0}, {"bn_gamma": 1, "bn_tau": 0.5},
                {"bn_beta": 1}, {"bn_gamma": "x"}):
        with pytest.raises(ConfigError):
            bv.ModelConfig(data_shape=(4,), latent_dim=3, posterior_options=bad)


@pytest.fixture(scope="module")
def collapse_runs():
    """Digits, a strong decoder (learned per-pixel variance, two 256-unit layers), 16 latent dims, 2 epochs: the
    plain VAE's KL collapses. Each run takes a few seconds."""
    spec = runs.DataSpec("digits")
    out = {}
    for name, options in (("plain", {}), ("gamma", {"bn_gamma": 0.5}), ("tau", {"bn_tau": 0.5})):
        trainer = runs.train(spec, out=None, train_config=TrainConfig(epochs=2, batch_size=64), latent_dim=16,
                             hidden=(256, 256), likelihood="gaussian-learned", posterior_options=options)
        out[name] = trainer.model
    x = runs.prepare_data(spec.load(), "gaussian-learned").test
    return out, x


def test_plain_vae_collapses_and_bn_keeps_the_kl_at_its_bound(collapse_runs):
    models, x = collapse_runs
    with torch.no_grad(), bv.estimators.eval_mode(models["plain"]):
        plain_kl = float(bv.elbo_terms(models["plain"], x).kl.mean()) / 16
    assert plain_kl < 0.1  # nats per dimension: collapsed
    for name in ("gamma", "tau"):
        model = models[name]
        with torch.no_grad(), bv.estimators.eval_mode(model):
            kl = float(bv.elbo_terms(model, x).kl.mean())
        assert kl >= model.posterior_head.kl_bound(), name  # on test data, under the running statistics


def test_evaluation_does_not_depend_on_the_batch(collapse_runs):
    models, x = collapse_runs
    model = models["tau"]
    x = x[:40]
    one = bv.estimate_log_likelihood(model, x, 64, seed=3, batch_size=1)
    many = bv.estimate_log_likelihood(model, x, 64, seed=3, batch_size=40)
    odd = bv.estimate_log_likelihood(model, x, 64, seed=3, batch_size=7)
    assert (one - many).abs().max() < 1e-6 and (one - odd).abs().max() < 1e-6
    a = bv.estimators.evaluate(model, x, 16, batch_size=5)
    b = bv.estimators.evaluate(model, x, 16, batch_size=40)
    for key in ("kl_nats", "active_units", "kl_per_dimension_nats"):
        # float32 products in another blocking differ by ~1e-6 relative (amplified by ln|σ| near 0); batch statistics
        # instead of running ones would change these by whole nats.
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6)
    before = model.posterior_head.mean_norm.running_mean.clone()
    bv.estimators.evaluate(model, x, 4, batch_size=3)
    assert torch.equal(before, model.posterior_head.mean_norm.running_mean)  # evaluation never updates them


def test_bn_run_writes_its_bound_to_run_json_and_prints_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--latent-dim", "4", "--posterior-bn", "gamma=0.5", "--out", str(out),
                 "--report-samples", "0"]) == 0
    bound = json.loads((out / "run.json").read_text())["kl_bound"]
    assert bound["nats"] == pytest.approx(4 * 0.25 / 2) and bound["nats_per_dim"] == pytest.approx(0.125)
    err = capsys.readouterr().err
    assert "the mean KL of every training batch is at least 0.5000 nats" in err and "may be lower" in err
    # The checkpoint carries the running statistics; the reloaded model evaluates the same.
    model = bv.load(out)
    assert float(model.posterior_head.mean_norm.num_batches_tracked) > 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--samples", "5"]) == 0
    text = capsys.readouterr().out
    assert "I(x; z)" in text
    # The floor is said to bound training batches, with the test KL beside it (it is no guarantee on test data)
    floor_line = next(line for line in text.splitlines() if "KL floor" in line)
    assert "0.500 nats on the mean of each training batch" in floor_line and "the test KL above is" in floor_line
    assert main(["evaluate", str(out), "--samples", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["mutual_information_nats"] <= math.log(180) and len(result["kl_per_dimension_nats"]) == 4
    assert main(["train", "--posterior-bn", "beta=1", "--out", str(tmp_path / "bad")]) == 2
    assert main(["train", "--resume", str(out), "--posterior-bn", "tau=0.5"]) == 2
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------------ free bits
def test_free_bits_objective_and_the_true_loss():
    torch.manual_seed(0)
    config = bv.ModelConfig(data_shape=(1, 8, 8), latent_dim=5, hidden=(32,))
    model = bv.build_model(config)
    x = (torch.rand(16, 1, 8, 8) > 0.5).float()
    lam = 0.5
    torch.manual_seed(1)
    out = TrainingObjective("elbo", 1, free_bits=lam)(model, x)
    torch.manual_seed(1)
    plain = TrainingObjective("elbo", 1)(model, x)
    torch.testing.assert_close(out["loss"], plain["loss"])  # the reported loss is the true -ELBO
    q = model.posterior(x)
    kl_dims = bv.kl_per_dimension(q, model.prior)
    expected = -out["reconstruction_nll"].mean() - torch.clamp(kl_dims.mean(0), min=lam).sum()
    torch.testing.assert_close(out["objective"].mean(), expected)
    # Dimensions under λ send no gradient through the KL: with λ above every dimension's KL, the objective's
    # gradient is the reconstruction term's alone (same draws).
    params = list(model.parameters())
    torch.manual_seed(2)
    g1 = torch.autograd.grad(TrainingObjective("elbo", 1, free_bits=1e6)(model, x)["objective"].mean(), params)
    torch.manual_seed(2)
    g2 = torch.autograd.grad(bv.elbo_terms(model, x, 1).reconstruction.mean(), params)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError):
        TrainConfig(free_bits=0.1, objective="iwae")
    with pytest.raises(ConfigError):
        TrainConfig(free_bits=-1.0)


# ------------------------------------------------------------------------------------------------ diagnostics
class _LinearGaussianEncoder(torch.nn.Module):
    """p(z|x) = N(x, s² I) with x ~ N(0, I): I(x; z) = d/2 log(1 + 1/s²) in closed form."""

    def __init__(self, s):
        super().__init__()
        self.log_s2 = math.log(s * s)

    def posterior(self, x):
        return bv.DiagonalNormal(x, torch.full_like(x, self.log_s2))


def test_mutual_information_estimate_against_its_closed_form():
    torch.manual_seed(0)
    d, s = 2, 1.0
    x = torch.randn(4000, d, generator=torch.Generator().manual_seed(11))  # not the estimator's seed 0
    exact = 0.5 * d * math.log(1 + 1 / s ** 2)  # 0.693 nats, far below log N = 6.9
    estimate = bv.mutual_information(_LinearGaussianEncoder(s), x, batch_size=1000)
    assert estimate == pytest.approx(exact, abs=0.05)
    # The stated bias: a nearly deterministic encoder has a huge I, the estimate stays below log N.
    sharp = bv.mutual_information(_LinearGaussianEncoder(1e-3), x, batch_size=500)
    assert sharp <= math.log(500) + 1e-9 and sharp > math.log(500) - 0.05


def test_evaluate_reports_the_mutual_information(collapse_runs, capsys):
    models, x = collapse_runs
    plain = bv.estimators.evaluate(models["plain"], x, 8)
    tau = bv.estimators.evaluate(models["tau"], x, 8)
    assert plain["mutual_information_nats"] < 0.1 < tau["mutual_information_nats"]
    assert tau["mutual_information_max_nats"] == pytest.approx(math.log(x.shape[0]))


def test_training_warns_once_when_units_collapse():
    messages = []
    runs.train(runs.DataSpec("digits"), out=None, train_config=TrainConfig(epochs=2, batch_size=64), latent_dim=16,
               hidden=(256, 256), likelihood="gaussian-learned", on_warning=messages.append)
    assert len(messages) == 1 and "of 16 latent units are active" in messages[0]


def test_no_collapse_warning_while_units_are_still_waking_up():
    """The demo (digits, 8 latent units) has 1 active unit after epoch 1 and all 8 from epoch 5: the check waits
    for the settling epochs, so the main job does not warn of a collapse that is not happening."""
    messages = []
    runs.train(runs.DataSpec("digits"), out=None, train_config=TrainConfig(epochs=6, batch_size=128), latent_dim=8,
               hidden=(256,), on_warning=messages.append)
    assert messages == []
