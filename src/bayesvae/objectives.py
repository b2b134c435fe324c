"""Bounds on log q(x), all built from one primitive: the log importance weights (design principle 3).

    log w = log q(x|z) + log q(z) - log p(z|x),   z ~ p(z|x),   Tensor[K, B]

The K-sample ELBO (eqs. 23-24) is the mean of log w over K (with the KL term in closed form, eq. 16, when the
posterior/prior pair has one); the IWAE bound (Burda et al. 2016) is logsumexp over K minus log K. Every function
returns per-example values in nats, higher is better; the trainer negates them in one place. The functions accept
any model offering ``posterior(x)``, ``likelihood(z)`` and ``prior`` (distributions are the interface).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.distributions import Distribution, kl_divergence

from .errors import ConfigError, DataValidationError, InputTypeError
from .likelihoods import batch_fitting

__all__ = ["ELBOTerms", "log_importance_weights", "elbo_terms", "elbo", "iwae_bound", "check_num_samples",
           "TrainingObjective", "checked_data"]

KL_MODES = ("analytic", "sampled", "auto")


def check_num_samples(num_samples, name: str = "num_samples") -> int:
    """Validate a sample count (a ValueError, not an assert, so it also holds under ``python -O``)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {num_samples!r}")
    return num_samples


def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataValidationError(f"x must be a non-empty batch Tensor[B, *data_shape], got {shape}")


def checked_data(model, x, name: str = "x", *, values: bool = True) -> torch.Tensor:
    """``x`` converted and checked by the model (:meth:`bayesvae.VAE.check_data`: type, dtype, device, shape,
    finite values on the likelihood's support); a model of one's own without ``check_data`` gets the basic check."""
    needs = ("posterior", "likelihood") if values else ("posterior",)  # functions of the encoder need posterior only
    if not all(callable(getattr(model, n, None)) for n in needs):
        raise InputTypeError(f"model must be a bayesvae.VAE (or offer {', '.join(f'{n}()' for n in needs)}), got "
                             f"{type(model).__name__}")
    check = getattr(model, "check_data", None)
    if check is not None:
        return check(x, name, values=values)
    _check_x(x)
    return x


def _check_pair(q: Distribution, p_x: Distribution, x: torch.Tensor) -> None:
    if tuple(q.batch_shape) != (x.shape[0],):
        raise ValueError(f"posterior(x) has batch_shape {tuple(q.batch_shape)}, expected ({x.shape[0]},) for x of shape {tuple(x.shape)}")
    _check_event(p_x, x)


def _check_event(p_x: Distribution, x: torch.Tensor) -> None:
    if tuple(p_x.event_shape) != tuple(x.shape[1:]):
        raise ValueError(f"x has data shape {tuple(x.shape[1:])} but the likelihood's event_shape is "
                         f"{tuple(p_x.event_shape)}; reshape the data or size the decoder for it")


def _log_weight_parts(model, x: torch.Tensor, q: Distribution, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q(x|z), log q(z) - log p(z|x)), each Tensor[K, B]."""
    p_x = model.likelihood(z)
    _check_pair(q, p_x, x)
    return p_x.log_prob(x), model.prior.log_prob(z) - q.log_prob(z)


def log_importance_weights(model, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
    """log w = log q(x|z) + log q(z) - log p(z|x) with z ~ p(z|x) reparameterised; Tensor[K, B] in nats."""
    check_num_samples(num_samples)
    x = checked_data(model, x)
    q = model.posterior(x)
    log_px, log_ratio = _log_weight_parts(model, x, q, q.rsample((num_samples,)))
    return log_px + log_ratio


@dataclass(frozen=True)
class ELBOTerms:
    """The two terms of eq. (13), per example: ELBO = reconstruction - kl (all Tensor[B], nats)."""

    reconstruction: torch.Tensor
    """E_{z~p(z|x)}[log q(x|z)], estimated with K samples (eq. 23)."""
    kl: torch.Tensor
    """KL(p(z|x) || q(z)): closed form (eq. 16) or the K-sample estimate."""

    @property
    def elbo(self) -> torch.Tensor:
        return self.reconstruction - self.kl


def elbo_terms(model, x: torch.Tensor, num_samples: int = 1, kl: str = "auto") -> ELBOTerms:
    """Reconstruction and KL terms of the K-sample ELBO (eqs. 23-24).

    ``kl``: ``analytic`` (closed form, error if the pair has none), ``sampled`` (mean of log p(z|x) - log q(z) over
    the same K samples, so the ELBO is exactly the mean of the log importance weights), or ``auto``.
    """
    check_num_samples(num_samples)
    if kl not in KL_MODES:
        raise ValueError(f"kl must be one of {KL_MODES}, got {kl!r}")
    x = checked_data(model, x)
    q = model.posterior(x)
    log_px, log_ratio = _log_weight_parts(model, x, q, q.rsample((num_samples,)))
    kl_value = None
    if kl != "sampled":
        try:
            kl_value = kl_divergence(q, model.prior)
        except NotImplementedError:
            if kl == "analytic":
                raise ValueError(f"no closed-form KL for {type(q).__name__} against {type(model.prior).__name__}; "
                                 "use kl='sampled'") from None
    if kl_value is None:
        kl_value = -log_ratio.mean(0)
    return ELBOTerms(log_px.mean(0), kl_value)


def elbo(model, x: torch.Tensor, num_samples: int = 1, kl: str = "auto") -> torch.Tensor:
    """The K-sample evidence lower bound, Tensor[B] in nats (the negative of the seed's loss, eq. 24)."""
    return elbo_terms(model, x, num_samples, kl).elbo


def iwae_bound(model, x: torch.Tensor, num_samples: int = 50) -> torch.Tensor:
    """IWAE bound logsumexp_k log w_k - log K, Tensor[B] in nats; ELBO ≤ IWAE_K ≤ log q(x), growing with K."""
    log_w = log_importance_weights(model, x, num_samples)
    return torch.logsumexp(log_w, dim=0) - math.log(num_samples)


class TrainingObjective:
    """What the trainer maximises, per example, with the terms it logs (all nats per example).

    ``objective`` is the K-sample ELBO (``kind="elbo"``) or the IWAE bound (``kind="iwae"``); with KL warm-up the
    ELBO's KL term is weighted by min(1, progress / warmup_epochs) (Bowman et al. 2016), while the logged
    ``loss`` (the bound's negative), ``reconstruction_nll`` and ``kl`` are always unweighted: for the ELBO,
    loss = reconstruction_nll + kl, the seed's loss (eq. 13). On a model in training mode it fits the statistics
    that are fitted to batches (:func:`bayesvae.likelihoods.batch_fitting`); ``elbo`` and ``iwae_bound`` never do.

    Free bits λ (``free_bits``, nats per dimension, Kingma et al. 2016): the ELBO's KL term becomes
    Σ_j max(λ, mean over the minibatch of KL_j), so dimensions below λ feel no pull towards the prior; per
    example, dimension j contributes KL_ij where the batch mean is ≥ λ and the constant λ otherwise (the batch
    mean of that is exactly the expression above). Needs a per-dimension KL (``kl_per_dimension``).
    """

    def __init__(self, kind: str = "elbo", num_samples: int = 1, kl_warmup_epochs: float = 0.0,
                 free_bits: float = 0.0, *, check_inputs: bool = True):
        if kind not in ("elbo", "iwae"):
            raise ValueError(f"kind must be 'elbo' or 'iwae', got {kind!r}")
        self.kind, self.num_samples = kind, check_num_samples(num_samples)
        self.check_inputs = check_inputs
        self.kl_warmup_epochs = float(kl_warmup_epochs)
        self.free_bits = float(free_bits)
        if not (math.isfinite(self.free_bits) and self.free_bits >= 0):
            raise ValueError(f"free_bits must be a finite number >= 0, got {free_bits!r}")
        if self.free_bits > 0 and kind != "elbo":
            raise ValueError("free bits apply to the ELBO objective only")

    def kl_weight(self, progress: float) -> float:
        return 1.0 if self.kl_warmup_epochs <= 0 else min(1.0, progress / self.kl_warmup_epochs)

    def __call__(self, model, x: torch.Tensor, progress: float = math.inf) -> dict[str, torch.Tensor]:
        # Statistics fitted to the batch (the optimal shared σ) are fitted only when training, never in validation.
        trusted = getattr(model, "trusted_inputs", None) if not self.check_inputs else None
        with batch_fitting(model, enabled=bool(getattr(model, "training", False))), \
                (trusted() if trusted is not None else contextlib.nullcontext()):
            return self._terms(model, x, progress)

    def _terms(self, model, x: torch.Tensor, progress: float) -> dict[str, torch.Tensor]:
        x = checked_data(model, x)
        if self.kind == "iwae":
            q = model.posterior(x)
            log_px, log_ratio = _log_weight_parts(model, x, q, q.rsample((self.num_samples,)))
            beta = self.kl_weight(progress)
            log_k = math.log(self.num_samples)
            bound = torch.logsumexp(log_px + log_ratio, dim=0) - log_k
            objective = bound if beta == 1.0 else torch.logsumexp(log_px + beta * log_ratio, dim=0) - log_k
            return {"objective": objective, "loss": -bound.detach(), "reconstruction_nll": -log_px.mean(0),
                    "kl": -log_ratio.mean(0)}
        if self.free_bits > 0:
            return self._free_bits(model, x, progress)
        terms = elbo_terms(model, x, self.num_samples)
        beta = self.kl_weight(progress)
        objective = terms.elbo if beta == 1.0 else terms.reconstruction - beta * terms.kl
        return {"objective": objective, "loss": -terms.elbo.detach(), "reconstruction_nll": -terms.reconstruction,
                "kl": terms.kl}

    def _free_bits(self, model, x: torch.Tensor, progress: float) -> dict[str, torch.Tensor]:
        from .posteriors import kl_per_dimension

        q = model.posterior(x)
        log_px, _ = _log_weight_parts(model, x, q, q.rsample((self.num_samples,)))
        kl_dims = kl_per_dimension(q, model.prior)  # [B, d]
        reconstruction, kl = log_px.mean(0), kl_dims.sum(-1)
        floor = torch.full_like(kl_dims, self.free_bits)
        charged = torch.where(kl_dims.detach().mean(0) >= self.free_bits, kl_dims, floor).sum(-1)
        objective = reconstruction - self.kl_weight(progress) * charged
        return {"objective": objective, "loss": -(reconstruction - kl).detach(), "reconstruction_nll": -reconstruction,
                "kl": kl}
