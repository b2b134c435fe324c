"""The VAE of the seed text: q(x, z) = q(x|z) q(z) with an encoder p(z|x) (eqs. 7-15).

``VAE`` composes any encoder and decoder ``nn.Module`` with a likelihood head, a posterior head and a prior. Its
three distribution-valued methods are the whole interface the objectives and estimators use:
``posterior(x)``, ``likelihood(z)`` and ``prior``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution

from .config import ModelConfig
from .likelihoods import Likelihood, ScaledDensity, make_likelihood
from .networks import MLP, ConvDecoder, ConvEncoder
from .posteriors import DiagonalGaussian, Posterior, make_posterior
from .priors import Prior, StandardNormalPrior, make_prior

__all__ = ["VAE", "build_model", "num_parameters"]


def _full_precision(params: torch.Tensor) -> torch.Tensor:
    """Distribution parameters in float32 at least: under bf16/fp16 autocast only the networks run in low precision;
    a sum of 784 log-densities in bf16 (8 bits of mantissa) would be off by whole nats."""
    return params.float() if params.dtype in (torch.float16, torch.bfloat16) else params


class VAE(nn.Module):
    """A variational autoencoder.

    Args:
        encoder: maps x ``[B, *data_shape]`` to the posterior's raw parameters ``[B, posterior.num_params(d)]``.
        decoder: maps z ``[N, d]`` to the likelihood's raw parameters ``[N, m*C, *rest]`` (m = likelihood.num_params).
        likelihood: the q(x|z) head, e.g. ``bv.Bernoulli()``.
        latent_dim: d.
        posterior: the p(z|x) head (default: diagonal Gaussian, eq. 15).
        prior: the q(z) module (default: standard normal).
        data_shape: one example's shape; when given, ``posterior`` checks its input against it.
        data_log_scale: for standardised data x' = (x - m) / s, the per-feature ln s (shape ``data_shape``): the
            model then works on x' but every density it gives is that of x, the data in the user's units
            (``likelihood(z).log_prob(x')`` includes the Jacobian -Σ ln s; see ``ScaledDensity``).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood, latent_dim: int,
                 posterior: Posterior | None = None, prior: Prior | None = None, data_shape=None,
                 config: ModelConfig | None = None, data_log_scale: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(likelihood, Likelihood):
            raise TypeError(f"likelihood must be a bayesvae Likelihood (e.g. bv.Bernoulli()), got {type(likelihood).__name__}")
        self.encoder, self.decoder = encoder, decoder
        self.likelihood_head = likelihood
        self.posterior_head = posterior if posterior is not None else DiagonalGaussian()
        self.prior_head = prior if prior is not None else StandardNormalPrior(latent_dim)
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        self.data_shape = tuple(data_shape) if data_shape is not None else None
        self.config = config
        if data_log_scale is not None:
            self.register_buffer("data_log_scale", torch.as_tensor(data_log_scale, dtype=torch.float32).clone())
        else:
            self.data_log_scale = None

    def posterior(self, x: torch.Tensor) -> Distribution:
        """p(z|x): batch_shape [B], event_shape [d]."""
        if self.data_shape is not None and (x.dim() < 1 or tuple(x.shape[1:]) != self.data_shape):
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.data_shape))}], got data shape "
                             f"{tuple(x.shape[1:])}; reshape the data to the model's data shape")
        return self.posterior_head(_full_precision(self.encoder(x)))

    def _decode(self, z: torch.Tensor) -> tuple[torch.Tensor, int]:
        if z.dim() < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape [..., {self.latent_dim}], got {tuple(z.shape)}")
        lead = z.shape[:-1]
        params = _full_precision(self.decoder(z.reshape(-1, self.latent_dim)))
        return params.reshape(*lead, *params.shape[1:]), params.dim() - 1

    def likelihood(self, z: torch.Tensor) -> Distribution:
        """q(x|z) for z of shape ``[*N, d]``: batch_shape [*N], event_shape = one example's shape."""
        params, event_ndim = self._decode(z)
        p_x = self.likelihood_head(params, event_ndim)
        if self.data_log_scale is not None:
            p_x = ScaledDensity(p_x, self.data_log_scale.sum())
        return p_x

    @property
    def prior(self) -> Distribution:
        """q(z): the one prior used by the loss, the estimators and ``sample``."""
        return self.prior_head()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means E[z|x], Tensor[B, d]."""
        return self.posterior(x).mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means E[x|z], Tensor[*N, *data_shape]."""
        params, event_ndim = self._decode(z)
        return self.likelihood_head.mean(params, event_ndim)

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True) -> torch.Tensor:
        """n draws z ~ q(z), decoded: E[x|z] when ``mean`` (what pictures show), else x ~ q(x|z)."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        z = self.prior.sample((n,))
        return self.decode(z) if mean else self.likelihood(z).sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, sample_latent: bool = False) -> torch.Tensor:
        """E[x|z] at the posterior's mode (E[z|x] for a Gaussian, μ on the sphere for vMF), or at one z ~ p(z|x)
        when ``sample_latent``."""
        q = self.posterior(x)
        if sample_latent:
            return self.decode(q.sample())
        try:
            centre = q.mode
        except NotImplementedError:  # a user's posterior without a mode
            centre = q.mean
        return self.decode(centre)


def build_model(config: ModelConfig) -> VAE:
    """Build the VAE a ``ModelConfig`` describes (checkpoints rebuild models this way, by registered names only)."""
    posterior = make_posterior(config.posterior, config.latent_dim, config.posterior_options)
    prior = make_prior(config.prior, config.latent_dim)
    if config.architecture == "rnn":  # text: a recurrent encoder and an autoregressive likelihood (bayesvae.text)
        from .text.model import build_text_parts

        encoder, decoder, likelihood = build_text_parts(config, posterior)
        return VAE(encoder, decoder, likelihood, config.latent_dim, posterior, prior, data_shape=config.data_shape,
                   config=config)
    likelihood = make_likelihood(config.likelihood, **config.likelihood_options)
    shape, d, m = config.data_shape, config.latent_dim, likelihood.num_params
    out_shape = (m * shape[0], *shape[1:])
    if config.architecture == "mlp":
        encoder = MLP(shape, config.hidden, posterior.num_params(d), config.activation)
        decoder = MLP(d, tuple(reversed(config.hidden)), out_shape, config.activation)
    else:
        hidden = config.hidden[0] if config.hidden else 256
        encoder = ConvEncoder(shape, posterior.num_params(d), config.conv_channels, hidden, config.activation)
        decoder = ConvDecoder(d, out_shape, tuple(reversed(config.conv_channels)), hidden, config.activation)
    data_log_scale = torch.zeros(shape) if config.standardized else None  # the loader's scales are loaded into it
    return VAE(encoder, decoder, likelihood, d, posterior, prior, data_shape=shape, config=config,
               data_log_scale=data_log_scale)


def num_parameters(model: nn.Module) -> int:
    """How many trainable numbers a model has."""
    return sum(math.prod(p.shape) for p in model.parameters())
