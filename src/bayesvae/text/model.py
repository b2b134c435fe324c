"""The text VAE's parts, built from a ``ModelConfig`` with ``architecture="rnn"`` (``build_model`` calls this)."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..likelihoods import make_likelihood
from .networks import PriorEncoder, RecurrentEncoder

__all__ = ["build_text_parts"]


def build_text_parts(config, posterior) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(encoder, decoder, likelihood): a recurrent encoder, the identity (z is the likelihood's parameter) and the
    autoregressive head sized from ``config.likelihood_options`` (``vocab_size`` ...; ``length`` = the row width and
    ``latent_dim`` come from the configuration)."""
    if config.likelihood != "autoregressive":
        raise ConfigError(f"architecture 'rnn' (text) needs the autoregressive likelihood, got {config.likelihood!r}")
    if len(config.data_shape) != 1:
        raise ConfigError(f"architecture 'rnn' needs token rows [T], got data_shape {config.data_shape}")
    options = dict(config.likelihood_options)
    for key in ("length", "latent_dim"):
        if key in options:
            raise ConfigError(f"likelihood option {key!r} is set from the data and --latent-dim, not given")
    likelihood = make_likelihood("autoregressive", length=config.data_shape[0], latent_dim=config.latent_dim, **options)
    out = posterior.num_params(config.latent_dim)
    if not likelihood.use_latent:
        if config.posterior != "diagonal-gaussian" or config.posterior_options:
            raise ConfigError("the language model without z (--no-latent) has no posterior to shape: drop "
                              "--posterior/--posterior-bn/--kappa")
        encoder: nn.Module = PriorEncoder(out)
    else:
        hidden = config.hidden[0] if config.hidden else likelihood.hidden_size
        encoder = RecurrentEncoder(likelihood.vocab_size, likelihood.embedding_dim, hidden, out, likelihood.cell)
    return encoder, nn.Identity(), likelihood
