"""The bounds are pure in every mode, with every posterior of the registry: ``elbo``, ``iwae_bound`` and
``estimate_log_likelihood`` change no buffer, give the value of eval mode in training mode, and work on a batch of
one; only the training objective fits statistics to the batch. Evaluation's figures do not depend on the batch
size."""

from __future__ import annotations

import pytest
import torch

import bayesvae as bv
from bayesvae.estimators import evaluate
from bayesvae.objectives import TrainingObjective
from bayesvae.posteriors import POSTERIORS

#: Options that exercise each posterior of the registry (a new posterior without an entry fails the last test).
POSTERIOR_OPTIONS = {
    "diagonal-gaussian": [{}, {"bn_gamma": 0.7}, {"bn_tau": 0.5}],
    "vmf": [{"kappa": 20.0}],
}
CASES = [(name, opts) for name, options in POSTERIOR_OPTIONS.items() for opts in options]


def _trained_model(name: str, options: dict) -> bv.VAE:
    """A small model whose running statistics are not the initial ones (a few objective steps in training mode)."""
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(12,), latent_dim=3, hidden=(16,), posterior=name,
                                          posterior_options=options))
    objective, opt = TrainingObjective("elbo"), torch.optim.Adam(model.parameters(), 1e-2)
    x = torch.rand(64, 12).round()
    model.train()
    for _ in range(5):
        opt.zero_grad()
        (-objective(model, x)["objective"].mean()).backward()
        opt.step()
    return model


def _buffers(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


BOUNDS = {
    "elbo": lambda m, x: bv.elbo(m, x, 3),
    "iwae_bound": lambda m, x: bv.iwae_bound(m, x, 5),
    "estimate_log_likelihood": lambda m, x: bv.estimate_log_likelihood(m, x, 20, seed=1),
}


@pytest.mark.parametrize("bound", list(BOUNDS))
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{o or ''}" for n, o in CASES])
def test_bounds_are_pure_in_training_mode(name, options, bound):
    model = _trained_model(name, options)
    x = torch.rand(10, 12).round()
    before = _buffers(model)
    model.eval()
    torch.manual_seed(3)
    in_eval = BOUNDS[bound](model, x)
    model.train()
    torch.manual_seed(3)
    in_training = BOUNDS[bound](model, x)
    after = _buffers(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"{bound} changed {changed}"
    torch.testing.assert_close(in_training, in_eval, rtol=0, atol=1e-5)
    one = BOUNDS[bound](model, x[:1])  # a batch of one, in training mode
    assert one.shape == (1,) and torch.isfinite(one).all()
    # and an example's value does not depend on the others in its batch (running statistics, never the batch's)
    if bound == "estimate_log_likelihood":
        torch.testing.assert_close(BOUNDS[bound](model, x[:1]), in_eval[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,options", [c for c in CASES if c[1].keys() & {"bn_gamma", "bn_tau"}])
def test_only_the_training_objective_updates_the_statistics(name, options):
    model = _trained_model(name, options)
    x = torch.rand(32, 12).round()
    before = _buffers(model)
    model.train()
    TrainingObjective("elbo")(model, x)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if "running" in k)


def test_every_registered_posterior_is_covered():
    assert set(POSTERIOR_OPTIONS) == set(POSTERIORS)


def test_evaluate_figures_do_not_depend_on_the_batch_size():
    """Each example's ELBO draw comes from its own seed, as the log-likelihood's do (it used to differ by about
    0.04 nats on digits between --batch-size values)."""
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(1, 4, 4), latent_dim=3, hidden=(16,)))
    x = torch.rand(23, 1, 4, 4).round()
    results = []
    for batch_size in (1, 7, 500):
        torch.manual_seed(11)
        results.append(evaluate(model, x, 30, batch_size=batch_size))
    for r in results[1:]:
        for key in ("log_likelihood_nats", "elbo_nats", "reconstruction_nll_nats", "kl_nats"):
            assert abs(r[key] - results[0][key]) < 1e-5, (key, r[key], results[0][key])
