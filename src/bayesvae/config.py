"""Typed, frozen, validated configuration: one dataclass per concern.

``from_dict`` rejects unknown keys and names the offending option; constructors only store and validate (they
never load data or pick a device). Configurations round-trip through JSON, which is how checkpoints store them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from .errors import ConfigError

__all__ = ["ModelConfig", "TrainConfig", "from_dict", "to_dict"]

class _Dataclass(Protocol):
    """Any dataclass (what ``dataclasses.fields`` and ``asdict`` take)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


T = TypeVar("T", bound=_Dataclass)


def _tuple(value: object, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError(f"option {name!r} must be a list, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a plain dict (e.g. parsed JSON); unknown keys are errors, lists become tuples."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s) {unknown}; valid options are {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if str(hints[key]).startswith("tuple") and value is not None:
            value = _tuple(value, key)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad {cls.__name__}: {err}") from None


def to_dict(config: _Dataclass) -> dict[str, Any]:
    """JSON-able dict of a config (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"option {name!r} must be a positive integer, got {value!r}")


def _positive_float(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"option {name!r} must be a {'non-negative' if allow_zero else 'positive'} number, "
                          f"got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """What ``build_model`` needs to rebuild a VAE from a checkpoint alone."""

    data_shape: tuple[int, ...]
    """Shape of one example: ``[C, H, W]`` for images, ``[D]`` for vectors."""
    latent_dim: int = 20
    architecture: str = "mlp"
    """``mlp``, ``conv`` (images only) or ``rnn`` (text: recurrent encoder, autoregressive likelihood)."""
    hidden: tuple[int, ...] = (400,)
    """Hidden layer widths of the MLP encoder; the decoder mirrors them."""
    activation: str = "relu"
    conv_channels: tuple[int, ...] = (32, 64)
    likelihood: str = "bernoulli"
    likelihood_options: dict = field(default_factory=dict)
    """Keyword arguments of the likelihood, e.g. ``{"sigma": 0.1}`` for ``gaussian-fixed``."""
    posterior: str = "diagonal-gaussian"
    """``diagonal-gaussian`` (eq. 15) or ``vmf`` (von Mises-Fisher of fixed κ on the unit sphere S^{d-1})."""
    prior: str | None = None
    """None: the posterior's own prior (``standard-normal`` for the Gaussian, ``uniform-sphere`` for vmf)."""
    posterior_options: dict = field(default_factory=dict)
    """``{"kappa": K}`` for vmf (required); ``{"bn_gamma": G}`` or ``{"bn_tau": T}`` for the Gaussian (VAE + BN)."""
    standardized: bool = False
    """The data were standardised per feature, x' = (x - m) / s: the model holds ln s (buffer ``data_log_scale``)
    and its densities are those of the data in the user's units (the Jacobian -Σ ln s included)."""

    def __post_init__(self) -> None:
        for name in ("data_shape", "hidden", "conv_channels"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ConfigError(f"option {name!r} must be a list of positive integers (e.g. {name}=(400,)), "
                                  f"got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not self.data_shape:
            raise ConfigError("option 'data_shape' must not be empty")
        for i, s in enumerate(self.data_shape):
            _positive_int(f"data_shape[{i}]", s)
        _positive_int("latent_dim", self.latent_dim)
        for i, h in enumerate(self.hidden):
            _positive_int(f"hidden[{i}]", h)
        if self.architecture not in ("mlp", "conv", "rnn"):
            raise ConfigError(f"option 'architecture' must be 'mlp', 'conv' or 'rnn' (text), got {self.architecture!r}")
        if self.architecture == "conv" and len(self.data_shape) != 3:
            raise ConfigError(f"architecture 'conv' needs image data [C, H, W], got data_shape {self.data_shape}; "
                              "use 'mlp'")
        if (self.likelihood == "autoregressive") != (self.architecture == "rnn"):
            raise ConfigError(f"likelihood {self.likelihood!r} with architecture {self.architecture!r}: text (token "
                              "rows) takes the autoregressive likelihood with architecture 'rnn', and only them")
        if not isinstance(self.standardized, bool):
            raise ConfigError(f"option 'standardized' must be true or false, got {self.standardized!r}")
        if not isinstance(self.likelihood_options, dict):
            raise ConfigError("option 'likelihood_options' must be a JSON object")
        from .posteriors import POSTERIORS, check_posterior_options
        from .priors import PRIORS

        check_posterior_options(self.posterior, self.posterior_options, self.latent_dim)
        allowed = POSTERIORS[self.posterior].priors
        if self.prior is None:
            object.__setattr__(self, "prior", allowed[0])
        if self.prior not in PRIORS:
            raise ConfigError(f"unknown prior {self.prior!r}; choose one of {sorted(PRIORS)}")
        if self.prior not in allowed:
            raise ConfigError(f"the {self.posterior} posterior needs a prior on the same space and base measure "
                              f"({', '.join(allowed)}), got prior {self.prior!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; nothing here knows about VAEs except the objective's name and sample count."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    """``constant``, ``cosine`` (to ``lr_min_factor`` x lr), or ``exponential`` (x ``lr_decay`` per epoch)."""
    lr_min_factor: float = 0.0
    lr_decay: float = 1.0
    objective: str = "elbo"
    """``elbo`` (eqs. 23-24, closed-form KL) or ``iwae`` (the importance-weighted bound)."""
    samples: int = 1
    """K samples of z per example (eq. 23)."""
    kl_warmup_epochs: float = 0.0
    """Linear KL weight warm-up from 0 to 1 over this many epochs (0: off). Reported losses use weight 1."""
    free_bits: float = 0.0
    """Free bits λ (Kingma et al. 2016), nats per latent dimension: the training objective charges each dimension
    max(λ, its minibatch-mean KL), so a dimension below λ gets no push towards the prior (0: off). Needs a
    factorised KL and the ``elbo`` objective. Reported losses are always the true negative ELBO."""
    early_stopping_patience: int = 0
    """Stop when the validation loss has not improved for this many epochs (0: off)."""
    seed: int = 0
    grad_clip: float = 0.0
    """Clip the gradient norm at this value (0: off)."""
    nonfinite_policy: str = "stop"
    """``stop`` (raise before the step) or ``skip`` (skip the step; stop after ``max_skipped_steps`` in a row)."""
    max_skipped_steps: int = 10
    checkpoint_every_steps: int = 0
    """Also save ``last`` every N optimiser steps (0: only at the end of each epoch)."""
    eval_batch_size: int = 1000
    max_seconds: float = 0.0
    """A training-time budget (0: none). The trainer times its steps, estimates how many fit (after a short warm-up,
    re-estimated as the run goes) and ends there, mid-epoch if need be; a total-dependent schedule (cosine) is laid
    over those steps, so it ends when the budget does. ``epochs`` stays a cap: the run and its schedule end at
    whichever comes first."""
    precision: str = "float32"
    """``float32``, or ``bf16``: the networks' matrix products of the training steps in bfloat16 (autocast; it
    pays on GPUs and CPUs with native bf16), every density, KL and the optimiser in float32; validation and
    evaluation always in float32. ``fp16``: the same in float16, with a gradient scaler (its state is checkpointed).
    ``auto``: ``bayesvae.runs.train`` times float32 and bf16 steps first and stores the faster (``precision.py``)."""
    data_order: str = "auto"
    """The order of the examples in an epoch (:mod:`bayesvae.orders`), a function of (seed, epoch): ``full`` (a
    uniform permutation), ``block`` (contiguous blocks in a shuffled order, rows shuffled within windows of blocks:
    for a memory-mapped file beyond the page cache), or ``auto`` (block for a split on disk that does not fit
    comfortably in memory, full otherwise; the trainer resolves it and stores the result, so resume keeps it)."""
    block_rows: int = 0
    """``block`` order: rows per block (0: :data:`bayesvae.orders.BLOCK_BYTES` of the file)."""
    window_blocks: int = 0
    """``block`` order: blocks whose rows are shuffled together (0: :data:`bayesvae.orders.WINDOW_BLOCKS`)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "samples", "eval_batch_size", "max_skipped_steps"):
            _positive_int(name, getattr(self, name))
        _positive_float("learning_rate", self.learning_rate)
        for name in ("lr_min_factor", "kl_warmup_epochs", "grad_clip", "max_seconds", "free_bits"):
            _positive_float(name, getattr(self, name), allow_zero=True)
        _positive_float("lr_decay", self.lr_decay)
        for name in ("early_stopping_patience", "checkpoint_every_steps", "seed", "block_rows", "window_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"option {name!r} must be a non-negative integer, got {value!r}")
        choices = {"lr_schedule": ("constant", "cosine", "exponential"), "objective": ("elbo", "iwae"),
                   "nonfinite_policy": ("stop", "skip"), "precision": ("float32", "bf16", "fp16", "auto"),
                   "data_order": ("auto", "full", "block")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"option {name!r} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.free_bits > 0 and self.objective != "elbo":
            raise ConfigError("free bits (free_bits > 0) shape the ELBO's KL term; use objective 'elbo' or free_bits 0")
