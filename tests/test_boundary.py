"""The library's boundary: every public function that takes data checks it the same way (one check,
``VAE.check_data``), so none returns a number for what is not data. Each failure is a typed ``BayesVAEError``
naming the argument; float64 tensors and numpy arrays are converted and give the float32 tensor's value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bayesvae as bv
from bayesvae.estimators import evaluate


def _evaluate(m, x):
    result = evaluate(m, x, 5)
    assert result is not None  # one process
    return result["log_likelihood_nats"]

#: The public functions of data, as (name, call(model, x)); the checks below run on every one.
PUBLIC = {
    "elbo": lambda m, x: bv.elbo(m, x, 2),
    "elbo_terms": lambda m, x: bv.elbo_terms(m, x).elbo,
    "iwae_bound": lambda m, x: bv.iwae_bound(m, x, 3),
    "log_importance_weights": lambda m, x: bv.log_importance_weights(m, x, 2),
    "estimate_log_likelihood": lambda m, x: bv.estimate_log_likelihood(m, x, 5, seed=0),
    "mutual_information": lambda m, x: bv.mutual_information(m, x),
    "active_units": lambda m, x: bv.active_units(m, x)[1],
    "per_dimension_kl": lambda m, x: bv.per_dimension_kl(m, x),
    "evaluate": _evaluate,
    "VAE.posterior": lambda m, x: m.posterior(x).mean,
    "VAE.encode": lambda m, x: m.encode(x),
    "VAE.reconstruct": lambda m, x: m.reconstruct(x),
}


def _bernoulli_model():
    torch.manual_seed(0)
    return bv.build_model(bv.ModelConfig(data_shape=(1, 4, 4), latent_dim=3, hidden=(16,))).eval()


def _binary(n=6):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1)).round()


BAD = {  # what, the input, the words the message must hold
    "below the support": (lambda x: x - 2.0, "support"),
    "grey levels": (lambda x: torch.full_like(x, 0.5), "{0, 1}"),
    "NaN": (lambda x: x.masked_fill(torch.arange(x.numel()).reshape(x.shape) == 3, float("nan")), "non-finite"),
    "inf": (lambda x: x.masked_fill(torch.arange(x.numel()).reshape(x.shape) == 0, float("inf")), "non-finite"),
    "another shape": (lambda x: x.reshape(x.shape[0], -1), "shape"),
    "an empty batch": (lambda x: x[:0], "non-empty"),
}


#: The encoder's functions take any finite x of the right shape (pictures encode grey levels); the densities also
#: refuse values off the likelihood's support.
ENCODER = {"VAE.posterior", "VAE.encode", "VAE.reconstruct", "active_units", "mutual_information",
           "per_dimension_kl"}
OFF_SUPPORT = {"below the support", "grey levels"}


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("function", list(PUBLIC))
def test_bad_data_is_refused_with_a_typed_error_naming_x(function, bad):
    make, words = BAD[bad]
    if function in ENCODER and bad in OFF_SUPPORT:
        assert torch.isfinite(torch.as_tensor(PUBLIC[function](_bernoulli_model(), make(_binary())))).all()
        return
    with pytest.raises(bv.BayesVAEError) as info:
        PUBLIC[function](_bernoulli_model(), make(_binary()))
    assert isinstance(info.value, ValueError) and words in str(info.value) and "x" in str(info.value)


@pytest.mark.parametrize("function", list(PUBLIC))
def test_wrong_types_are_refused_and_float64_and_numpy_are_converted(function):
    model, x = _bernoulli_model(), _binary()
    for wrong in ([[0.0, 1.0]], "x.npy", None):
        with pytest.raises(bv.BayesVAEError) as info:
            PUBLIC[function](model, wrong)
        assert isinstance(info.value, (TypeError, ValueError))
    torch.manual_seed(5)
    reference = torch.as_tensor(PUBLIC[function](model, x), dtype=torch.float64)
    for converted in (x.double(), x.numpy(), x.to(torch.uint8) * 255):
        torch.manual_seed(5)
        value = torch.as_tensor(PUBLIC[function](model, converted), dtype=torch.float64)
        torch.testing.assert_close(value, reference, rtol=0, atol=1e-5)


def test_the_gaussian_support_is_the_real_line():
    """No false refusal: negative and fractional values are data for a Gaussian decoder."""
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(5,), latent_dim=2, hidden=(8,), likelihood="gaussian-learned"))
    x = torch.randn(7, 5) * 3
    for function in PUBLIC.values():
        function(model, x)


def test_a_bernoulli_model_gives_no_probability_above_one():
    """The finding: x = -1 used to score +149 to +189 nats (a probability far above 1)."""
    with pytest.raises(bv.DataValidationError):
        bv.estimate_log_likelihood(_bernoulli_model(), -torch.ones(3, 1, 4, 4), 10)
    ll = bv.estimate_log_likelihood(_bernoulli_model(), _binary(), 50, seed=0)
    assert (ll < 0).all()  # a probability mass of 16 binary pixels is below 1


def test_latents_counts_and_paths_are_checked():
    model = _bernoulli_model()
    for call, error in ((lambda: model.likelihood(torch.zeros(2, 5)), bv.DataValidationError),
                        (lambda: model.likelihood([0.0, 0.0, 0.0]), bv.InputTypeError),
                        (lambda: model.decode(np.zeros((2, 3))), bv.InputTypeError),
                        (lambda: model.sample(0), bv.ConfigError), (lambda: model.sample("4"), bv.ConfigError),
                        (lambda: bv.load(5), bv.InputTypeError),
                        (lambda: bv.load("runs/x", which=3), bv.InputTypeError),
                        (lambda: bv.ModelConfig(data_shape=(4,), hidden=400), bv.ConfigError),
                        (lambda: bv.ModelConfig(data_shape=4), bv.ConfigError)):
        with pytest.raises(error):
            call()


def test_training_skips_the_value_checks_and_says_what_they_cost():
    """The library's own training checks only shapes (its data were prepared by it); the full check costs one
    pass over the batch, measured by benchmarks/boundary_cost.py."""
    from bayesvae.objectives import TrainingObjective

    model = _bernoulli_model().train()
    grey = torch.full((4, 1, 4, 4), 0.5)
    with pytest.raises(bv.DataValidationError):
        TrainingObjective("elbo")(model, grey)
    TrainingObjective("elbo", check_inputs=False)(model, grey)  # trusted: no value check
    with pytest.raises(bv.DataValidationError):
        TrainingObjective("elbo", check_inputs=False)(model, grey.reshape(4, 16))  # shapes always
