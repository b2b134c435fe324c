"""The random draws of a training step, independent of how many processes share its batch.

Within :func:`step_draws` (the trainer enters it around each step), the draws that belong to the examples of a
batch, the dynamic binarisation's uniforms and the Gaussian posterior's reparameterisation noise, come from one
generator seeded by (seed, step) alone. Every process draws the noise of the whole global batch and keeps the rows
of its own examples, so the step draws the same numbers for example i whether one process or several share the
batch: a torchrun run takes the steps of the one-process run (up to the order of float sums), and resuming with
another number of processes is exact. Outside a step, nothing changes: the global generator is used.

A draw whose count depends on the values (the vMF posterior's rejection sampler) cannot be split this way; it
keeps each process's own stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch

__all__ = ["StepDraws", "step_draws", "current"]


class StepDraws:
    """The draws of one step for the rows ``rows`` (this process's examples) of a global batch of ``total``."""

    def __init__(self, seed: int, step: int, total: int, rows: slice, device: torch.device | str = "cpu"):
        self.total, self.rows = int(total), rows
        self.local = len(range(*rows.indices(self.total)))
        self.generator = torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + int(step)) % 2**63)

    def _keep(self, full: torch.Tensor, lead: int) -> torch.Tensor:
        return full[(slice(None),) * lead + (self.rows,)]

    def uniform(self, row_shape: Sequence[int], dtype: torch.dtype = torch.float32,
                lead_shape: Sequence[int] = ()) -> torch.Tensor:
        """U[0, 1) of shape [*lead_shape, local rows, *row_shape]."""
        lead = tuple(lead_shape)
        return self._keep(torch.rand((*lead, self.total, *row_shape), generator=self.generator, dtype=dtype,
                                     device=self.generator.device), len(lead))

    def normal(self, lead_shape: Sequence[int], row_shape: Sequence[int], dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        """N(0, 1) of shape [*lead_shape, local rows, *row_shape]."""
        lead = tuple(lead_shape)
        return self._keep(torch.randn((*lead, self.total, *row_shape), generator=self.generator, dtype=dtype,
                                      device=self.generator.device), len(lead))


_CURRENT: ContextVar[StepDraws | None] = ContextVar("bayesvae_step_draws", default=None)


def current(rows: int | None = None) -> StepDraws | None:
    """The draws of the step in progress, if any (and, given ``rows``, if that is its number of local rows)."""
    draws = _CURRENT.get()
    if draws is None or (rows is not None and rows != draws.local):
        return None
    return draws


@contextlib.contextmanager
def step_draws(draws: StepDraws | None) -> Iterator[None]:
    token = _CURRENT.set(draws)
    try:
        yield
    finally:
        _CURRENT.reset(token)
