"""The VAE composition, the ready networks and the typed configuration."""

import pytest
import torch

import bayesvae as bv
from bayesvae.config import from_dict, to_dict
from bayesvae.likelihoods import LIKELIHOODS


@pytest.mark.parametrize("architecture,shape", [("mlp", (1, 8, 8)), ("mlp", (5,)), ("conv", (1, 28, 28)),
                                                ("conv", (3, 9, 7))])
@pytest.mark.parametrize("likelihood", sorted(n for n, c in LIKELIHOODS.items() if c.data == "values"))
def test_every_architecture_and_likelihood_has_consistent_shapes(architecture, shape, likelihood):
    if architecture == "conv" and len(shape) != 3:
        pytest.skip("conv needs images")
    torch.manual_seed(0)
    cfg = bv.ModelConfig(data_shape=shape, latent_dim=3, hidden=(16,), architecture=architecture,
                         conv_channels=(4, 8), likelihood=likelihood)
    model = bv.build_model(cfg)
    x = torch.rand(5, *shape).round() if likelihood == "bernoulli" else torch.rand(5, *shape)
    q = model.posterior(x)
    assert tuple(q.batch_shape) == (5,) and tuple(q.event_shape) == (3,)
    p = model.likelihood(q.rsample((2,)))
    assert tuple(p.batch_shape) == (2, 5) and tuple(p.event_shape) == shape
    assert model.sample(4).shape == (4, *shape)
    assert model.reconstruct(x).shape == x.shape
    assert model.encode(x).shape == (5, 3)
    loss = -bv.elbo(model, x, 2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_vae_composes_user_modules():
    enc, dec = torch.nn.Linear(6, 4), torch.nn.Linear(2, 6 * bv.GaussianLearnedVariance.num_params)
    model = bv.VAE(enc, dec, bv.GaussianLearnedVariance(), latent_dim=2)
    assert bv.elbo(model, torch.randn(3, 6)).shape == (3,)
    with pytest.raises(TypeError, match="Likelihood"):
        bv.VAE(enc, dec, torch.distributions.Normal, latent_dim=2)


def test_decoder_means_are_probabilities_for_bernoulli():
    model = bv.build_model(bv.ModelConfig(data_shape=(10,), latent_dim=2, hidden=(8,)))
    s = model.sample(50)
    assert s.min() >= 0 and s.max() <= 1
    with pytest.raises(ValueError, match="positive integer"):
        model.sample(0)


def test_config_round_trips_and_rejects_unknown_or_bad_options():
    cfg = bv.ModelConfig(data_shape=(1, 28, 28), hidden=(200, 200), likelihood_options={"sigma": 0.1},
                         likelihood="gaussian-fixed")
    assert from_dict(bv.ModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(bv.ConfigError, match="unknown ModelConfig option"):
        from_dict(bv.ModelConfig, {"data_shape": [3], "latnet_dim": 2})
    with pytest.raises(bv.ConfigError, match="latent_dim"):
        bv.ModelConfig(data_shape=(3,), latent_dim=0)
    with pytest.raises(bv.ConfigError, match="conv"):
        bv.ModelConfig(data_shape=(3,), architecture="conv")
    with pytest.raises(bv.ConfigError, match="learning_rate"):
        bv.TrainConfig(learning_rate=-1.0)
    with pytest.raises(bv.ConfigError, match="objective"):
        bv.TrainConfig(objective="mse")
    with pytest.raises(ValueError, match="unknown likelihood"):
        bv.build_model(bv.ModelConfig(data_shape=(3,), likelihood="os.system"))
