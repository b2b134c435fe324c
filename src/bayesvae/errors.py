"""The toolkit's typed errors.

Every error a user can cause is a subclass of :class:`BayesVAEError` (and of ``ValueError`` where the cause is a
bad value), so the CLI can print its message and exit with code 2 without a traceback.
"""

from __future__ import annotations


class BayesVAEError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class InputTypeError(BayesVAEError, TypeError):
    """An argument of a public function has the wrong type: the message names it, what was expected and found."""


class DataValidationError(BayesVAEError, ValueError):
    """Input data are malformed: the message names the file, row and column and says how to fix it."""


class CheckpointError(BayesVAEError):
    """A checkpoint cannot be used."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint exists where one was expected."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint is truncated, tampered with, or otherwise unreadable."""


class UnsafeCheckpointError(CheckpointError):
    """A file that would need code execution to load (for example a pickle) was offered as a checkpoint."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint does not match the requested configuration (the message lists the differing keys)."""


class NonFiniteError(BayesVAEError, FloatingPointError):
    """A loss term or gradient became NaN or infinite; raised before the optimiser step."""


class ConfigError(BayesVAEError, ValueError):
    """An option is invalid; the message names it."""


class OutputExistsError(BayesVAEError, FileExistsError):
    """An output path exists and ``overwrite`` was not requested."""


class InsufficientMemoryError(DataValidationError, ConfigError, MemoryError):
    """A request would not fit in the memory available (a data source's preparation, or an option's: a model's
    size, ``n`` samples, ``K`` importance samples); refused before allocating by :func:`bayesvae.memory.require`,
    with the estimate, the memory available and the way out (``bayesvae data convert``, a smaller file, the option
    to lower). It is a :class:`DataValidationError` and a :class:`ConfigError` (the input or the option that asked
    too much) and a ``MemoryError``."""
