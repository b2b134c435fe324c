"""The VAE of the seed text: q(x, z) = q(x|z) q(z) with an encoder p(z|x) (eqs. 7-15).

``VAE`` composes any encoder and decoder ``nn.Module`` with a likelihood head, a posterior head and a prior. Its
three distribution-valued methods are the whole interface the objectives and estimators use:
``posterior(x)``, ``likelihood(z)`` and ``prior``.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.distributions import Distribution, constraints

from .config import ModelConfig
from .errors import ConfigError, DataValidationError, InputTypeError
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

    data_log_scale: torch.Tensor | None  # a buffer, or None

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood, latent_dim: int,
                 posterior: Posterior | None = None, prior: Prior | None = None,
                 data_shape: Sequence[int] | None = None,
                 config: ModelConfig | None = None, data_log_scale: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(likelihood, Likelihood):
            raise TypeError("likelihood must be a bayesvae Likelihood (e.g. bv.Bernoulli()), "
                            f"got {type(likelihood).__name__}")
        self.encoder, self.decoder = encoder, decoder
        self.likelihood_head = likelihood
        self.posterior_head = posterior if posterior is not None else DiagonalGaussian()
        self.prior_head = prior if prior is not None else StandardNormalPrior(latent_dim)
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        self.data_shape = tuple(data_shape) if data_shape is not None else None
        self._trusted = False
        self._checked: tuple = (None, None, False)  # (weak reference, version, values checked) of the last x
        self.config = config
        if data_log_scale is not None:
            self.register_buffer("data_log_scale", torch.as_tensor(data_log_scale, dtype=torch.float32).clone())
        else:
            self.data_log_scale = None

    def check_data(self, x: object, name: str = "x", *, values: bool = True) -> torch.Tensor:
        """``x`` as the model takes it, or a typed error naming ``name``, what was expected and what was found.

        A numpy array becomes a tensor; 8-bit data become k/255 and other dtypes the parameters' (float64 to
        float32); the batch moves to the model's device. Refused: other types (:class:`InputTypeError`), an empty
        batch or another data shape, non-finite values, and (``values``) values off the likelihood's support, such
        as grey levels for a Bernoulli decoder (:class:`DataValidationError`). Within :meth:`trusted_inputs` (the
        library's own training on data it prepared) only the shape is checked."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"{name} must be a torch.Tensor (or a numpy array) of shape [B, "
                                 f"{', '.join(map(str, self.data_shape or ('...',)))}], got {type(x).__name__}")
        param = next(self.parameters(), None)
        if getattr(self.likelihood_head, "data", "values") == "tokens":
            return self._check_tokens(x, name, param)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        if x.dtype == torch.uint8:
            x = x.to(dtype) / 255.0
        elif x.dtype != dtype and not (self._trusted and x.dtype in (torch.float16, torch.bfloat16)):
            x = x.to(dtype)
        if param is not None and x.device != param.device:
            x = x.to(param.device)
        if x.dim() < 1 or x.shape[0] == 0 or (self.data_shape is not None and tuple(x.shape[1:]) != self.data_shape):
            want = f"[B, {', '.join(map(str, self.data_shape))}]" if self.data_shape is not None else "[B, ...]"
            fits = self.data_shape is not None and x.dim() >= 2 and math.prod(x.shape[1:]) == math.prod(self.data_shape)
            hint = (f"; reshape it: x.reshape(-1, {', '.join(map(str, self.data_shape or ()))})" if fits else
                    "; these are not data of this model (another size per example)")
            raise DataValidationError(f"{name} must be a non-empty batch of shape {want} (B examples of the model's "
                                      f"data shape), got shape {tuple(x.shape)}{hint}")
        ref, version, with_values = self._checked
        if self._trusted or (ref is not None and ref() is x and version == x._version and (with_values or not values)):
            return x  # trusted, or this very tensor, unchanged, was checked a moment ago (a bound, then posterior)
        support = self.likelihood_head.support
        on_support = values and support is not constraints.real
        # one pass: the support's check also fails NaN and ±inf ({0, 1} here); the message tells which
        bad = ~support.check(x) if on_support else ~torch.isfinite(x)
        if bool(bad.any()) and not bool(torch.isfinite(x).all()):
            bad = ~torch.isfinite(x)
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise DataValidationError(f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or ±inf), the first "
                                      f"at index {where}: {float(x[where])}; a density of such data is not defined")
        if on_support:
            off = bad
            if bool(off.any()):
                where = tuple(int(i) for i in off.nonzero()[0])
                raise DataValidationError(
                    f"{name} holds {int(off.sum())} value(s) off the support of the {self.likelihood_head.name} "
                    f"likelihood ({self.likelihood_head.support_text}), the first at index {where}: "
                    f"{float(x[where]):g}; its log-likelihood "
                    f"would be no density of these data. {self.likelihood_head.support_hint}".rstrip())
        self._checked = (weakref.ref(x), x._version, values)
        return x

    def _check_tokens(self, x: torch.Tensor, name: str, param: torch.Tensor | None) -> torch.Tensor:
        """Rows of token ids (text): integers in [0, V), of the model's row width, on the model's device."""
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise DataValidationError(f"{name} must hold token ids (an integer tensor of shape [B, "
                                      f"{', '.join(map(str, self.data_shape or ('T',)))}]), got dtype {x.dtype}; "
                                      "encode sentences with the run's vocabulary")
        x = x.long()
        if param is not None and x.device != param.device:
            x = x.to(param.device)
        if x.dim() != 2 or x.shape[0] == 0 or (self.data_shape is not None and tuple(x.shape[1:]) != self.data_shape):
            raise DataValidationError(f"{name} must be a non-empty batch of token rows of shape [B, "
                                      f"{', '.join(map(str, self.data_shape or ('T',)))}], got {tuple(x.shape)}")
        vocab = getattr(self.likelihood_head, "vocab_size", None)
        if not self._trusted and vocab is not None and bool(((x < -1) | (x >= vocab)).any()):  # -1: padding
            raise DataValidationError(f"{name} holds token ids outside [0, {vocab}) (the vocabulary's size; -1 "
                                      "pads after <eos>)")
        return x

    def __getstate__(self) -> dict:  # pickle and deepcopy: the memo of the last checked tensor is a weak reference
        state = dict(self.__dict__)
        state["_checked"] = (None, None, False)
        return state

    @contextlib.contextmanager
    def trusted_inputs(self) -> Iterator[None]:
        """Within: data the library prepared itself (training); :meth:`check_data` checks only their shape."""
        saved, self._trusted = self._trusted, True
        try:
            yield
        finally:
            self._trusted = saved

    def posterior(self, x: torch.Tensor) -> Distribution:
        """p(z|x): batch_shape [B], event_shape [d]. ``x`` is checked by :meth:`check_data`, all but its values'
        support: the encoder is a function of any finite x (pictures encode grey levels); the densities refuse
        them."""
        x = self.check_data(x, values=False)
        q: Distribution = self.posterior_head(_full_precision(self.encoder(x)))
        return q

    def _decode(self, z: torch.Tensor) -> tuple[torch.Tensor, int]:
        if not isinstance(z, torch.Tensor):
            raise InputTypeError(f"z must be a torch.Tensor of shape [..., {self.latent_dim}], got {type(z).__name__}")
        if z.dim() < 1 or z.shape[-1] != self.latent_dim:
            raise DataValidationError(f"z must have shape [..., {self.latent_dim}] (the latent dimension), got "
                                      f"{tuple(z.shape)}")
        if not self._trusted and not bool(torch.isfinite(z).all()):
            raise DataValidationError("z holds non-finite values (NaN or ±inf); the decoder's distribution of such "
                                      "a z is not defined")
        lead = z.shape[:-1]
        params = _full_precision(self.decoder(z.reshape(-1, self.latent_dim)))
        return params.reshape(*lead, *params.shape[1:]), params.dim() - 1

    def likelihood(self, z: torch.Tensor) -> Distribution:
        """q(x|z) for z of shape ``[*N, d]``: batch_shape ``[*N]``, event_shape = one example's shape."""
        params, event_ndim = self._decode(z)
        p_x: Distribution = self.likelihood_head(params, event_ndim)
        if self.data_log_scale is not None:
            p_x = ScaledDensity(p_x, self.data_log_scale.sum())
        return p_x

    @property
    def prior(self) -> Distribution:
        """q(z): the one prior used by the loss, the estimators and ``sample``."""
        prior: Distribution = self.prior_head()
        return prior

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means E[z|x], Tensor[B, d]."""
        return self.posterior(x).mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means E[x|z], ``Tensor[*N, *data_shape]``."""
        params, event_ndim = self._decode(z)
        return self.likelihood_head.mean(params, event_ndim)

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True) -> torch.Tensor:
        """n draws z ~ q(z), decoded: E[x|z] when ``mean`` (what pictures show), else x ~ q(x|z)."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ConfigError(f"n must be a positive integer (the number of samples), got {n!r}")
        from . import memory
        per_example = 4 * (self.latent_dim + 3 * self.likelihood_head.num_params * math.prod(self.data_shape or (1,)))
        memory.require("sample", n * per_example, f"drawing n = {n} samples", "Draw fewer (-n) and run again for more")
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
    assert config.prior is not None  # ModelConfig.__post_init__ fills it in
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
