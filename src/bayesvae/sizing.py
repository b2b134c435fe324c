"""The sizes of a VAE for a table, chosen from its rows and columns when the user leaves them unset.

``bayesvae train --data table.csv`` (a Gaussian or Student-t decoder on standardised columns) and
:class:`bayesvae.VAEDensity` use :func:`table_defaults` for every one of these settings that the user did not
give: the MLP's width, the latent dimension, the minibatch size, the most epochs, and early stopping on the
validation split (its patience), which is the regulariser: the weights kept are those of the epoch with the best
validation loss. The rule was fitted to held-out log-likelihoods of a grid of sizes on 13 tables (benchmarks/
tabular_sizing.py; the measurement and the rule's regret on each table are in docs/tabular-defaults.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .config import TrainConfig

__all__ = ["TableSizes", "table_defaults", "SETTINGS"]

#: The settings the rule can choose (their names in :func:`bayesvae.runs.train`).
SETTINGS = ("hidden", "latent_dim", "batch_size", "epochs", "patience")

#: Minibatch size of the rule, and the optimiser steps that bound a run and that early stopping waits for.
BATCH_SIZE, MAX_STEPS, PATIENCE_STEPS = 64, 40_000, 600
MIN_EPOCHS, MAX_EPOCHS, MIN_PATIENCE, MAX_PATIENCE = 100, 3000, 30, 100


@dataclass(frozen=True)
class TableSizes:
    """What :func:`table_defaults` chose, with the rows and columns it chose from."""

    hidden: tuple[int, ...]
    latent_dim: int
    batch_size: int
    epochs: int
    patience: int
    n_rows: int
    n_columns: int

    def apply(self, which: Collection[str], hidden: Sequence[int], latent_dim: int,
              config: TrainConfig) -> tuple[tuple[int, ...], int, TrainConfig]:
        """(hidden, latent_dim, train config) with the settings named in ``which`` replaced by this rule's."""
        unknown = set(which) - set(SETTINGS)
        if unknown:
            raise ValueError(f"table sizes: unknown setting(s) {sorted(unknown)}; choose among {list(SETTINGS)}")
        if "batch_size" in which:
            config = dataclasses.replace(config, batch_size=self.batch_size)
        if "epochs" in which:
            config = dataclasses.replace(config, epochs=self.epochs)
        if "patience" in which:
            config = dataclasses.replace(config, early_stopping_patience=self.patience)
        return (self.hidden if "hidden" in which else tuple(hidden),
                self.latent_dim if "latent_dim" in which else latent_dim, config)

    def record(self, which: Collection[str]) -> dict:
        """What run.json keeps: the values chosen by the rule (only those the user left unset) and its inputs."""
        values = {"hidden": list(self.hidden), "latent_dim": self.latent_dim, "batch_size": self.batch_size,
                  "epochs": self.epochs, "patience": self.patience}
        return {"chosen": {k: v for k, v in values.items() if k in which}, "n_rows": self.n_rows,
                "n_columns": self.n_columns, "rule": "bayesvae.sizing.table_defaults"}

    def describe(self, which: Collection[str] = SETTINGS) -> str:
        """One line: the chosen settings as the CLI's flags."""
        flags = {"hidden": f"--hidden {' '.join(map(str, self.hidden))}",
                 "latent_dim": f"--latent-dim {self.latent_dim}",
                 "batch_size": f"--batch-size {self.batch_size}", "epochs": f"--epochs {self.epochs}",
                 "patience": f"--patience {self.patience}"}
        return " ".join(flags[k] for k in SETTINGS if k in which)


def _latent_dim(n_columns: int) -> int:
    """d = ceil(D / 4), at least 4 and at most D (and 32): the best latent dimension of the measurement grew with
    the columns (breast cancer, 30: 8; digits, 64: 16), d = 2 cost 2.8-17 nats wherever D >= 20, and d = 4 was the
    best or within 0.3 nats of it on every table of 4 to 13 columns (iris, the Gaussian mixtures, diabetes, wine).
    Beyond 64 columns the rule is an extrapolation (capped at 32)."""
    return min(n_columns, 32, max(4, math.ceil(n_columns / 4)))


def _width(latent_dim: int) -> int:
    """64 units, or 4 per latent dimension where that is more (rounded up to 16): 64 was within the noise of
    the best width (16, 64, 256) on every table measured, from 105 to 2,100 rows; 16 lost up to 9 nats on the
    wide tables, 256 lost up to 1.6 nats on the smallest ones."""
    return max(64, 16 * math.ceil(4 * latent_dim / 16))


def table_defaults(n_rows: int, n_columns: int, validation: bool = True) -> TableSizes:
    """The sizes for ``n_rows`` training rows of ``n_columns`` features (``validation``: a validation split exists,
    so early stopping can watch it; without one the patience is 0 and every epoch up to the cap is trained)."""
    if n_rows < 1 or n_columns < 1:
        raise ValueError(f"a table needs at least one row and one column, got {n_rows} x {n_columns}")
    steps_per_epoch = math.ceil(n_rows / BATCH_SIZE)
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MAX_STEPS / steps_per_epoch)))
    patience = min(MAX_PATIENCE, max(MIN_PATIENCE, math.ceil(PATIENCE_STEPS / steps_per_epoch))) if validation else 0
    latent_dim = _latent_dim(n_columns)
    return TableSizes((_width(latent_dim),), latent_dim, BATCH_SIZE, epochs, patience, n_rows, n_columns)
