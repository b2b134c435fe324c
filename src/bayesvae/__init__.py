"""bayesvae: variational autoencoders exactly as the Bayesian derivation says (see README.md and `make docs`).

The public API, explicit. Modules are named after the mathematics: ``likelihoods`` (q(x|z)), ``posteriors``
(p(z|x)), ``priors`` (q(z)), ``objectives`` (bounds from the log importance weights), ``estimators`` (evaluation).
"""

from .config import ModelConfig, TrainConfig
from .errors import (
    BayesVAEError,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    DataValidationError,
    IncompatibleCheckpointError,
    InputTypeError,
    InsufficientMemoryError,
    NonFiniteError,
    OutputExistsError,
    UnsafeCheckpointError,
)
from .estimators import active_units, bits_per_dim, estimate_log_likelihood, mutual_information, per_dimension_kl
from .likelihoods import (
    Bernoulli,
    GaussianFixedVariance,
    GaussianLearnedVariance,
    GaussianLowRank,
    GaussianSharedVariance,
    Likelihood,
    StudentTLearnedScale,
    make_likelihood,
)
from .model import VAE, build_model, num_parameters
from .networks import MLP, ConvDecoder, ConvEncoder
from .objectives import ELBOTerms, elbo, elbo_terms, iwae_bound, log_importance_weights
from .posteriors import DiagonalGaussian, DiagonalNormal, Posterior, VonMisesFisherPosterior, kl_per_dimension
from .priors import Prior, StandardNormal, StandardNormalPrior, UniformSpherePrior
from .runs import load
from .sphere import UniformSphere, VonMisesFisher

__version__ = "0.1.0"

#: Exported lazily: importing scikit-learn costs the CLI's start-up about half a second.
_SKLEARN_NAMES = ("VAEDensity", "VAEOutlierDetector")


def __getattr__(name: str):
    if name in _SKLEARN_NAMES:
        from . import sklearn as _sklearn_estimators

        return getattr(_sklearn_estimators, name)
    raise AttributeError(f"module 'bayesvae' has no attribute {name!r}")


__all__ = [
    "ModelConfig", "TrainConfig",
    "BayesVAEError", "CheckpointCorruptError", "CheckpointError", "CheckpointNotFoundError", "ConfigError",
    "DataValidationError", "IncompatibleCheckpointError", "InputTypeError", "InsufficientMemoryError", "NonFiniteError",
    "OutputExistsError",
    "UnsafeCheckpointError",
    "active_units", "bits_per_dim", "estimate_log_likelihood", "mutual_information", "per_dimension_kl",
    "Bernoulli", "GaussianFixedVariance", "GaussianLearnedVariance", "GaussianSharedVariance", "Likelihood",
    "GaussianLowRank", "StudentTLearnedScale", "make_likelihood",
    "VAE", "build_model", "num_parameters",
    "MLP", "ConvDecoder", "ConvEncoder",
    "ELBOTerms", "elbo", "elbo_terms", "iwae_bound", "log_importance_weights",
    "DiagonalGaussian", "DiagonalNormal", "Posterior", "VonMisesFisherPosterior", "kl_per_dimension",
    "Prior", "StandardNormal", "StandardNormalPrior", "UniformSpherePrior", "UniformSphere", "VonMisesFisher",
    "load",
    "VAEDensity", "VAEOutlierDetector",
    "__version__",
]
