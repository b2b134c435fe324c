"""The sizes of a VAE for a table, chosen from its rows and columns when the user leaves them unset.

``bayesvae train --data table.csv`` (a Gaussian or Student-t decoder on standardised columns) and
:class:`bayesvae.VAEDensity` use :func:`table_defaults` for every one of these settings that the user did not
give: the MLP's width, the latent dimension, the minibatch size, the most epochs, early stopping on the
validation split (its patience), which is the regulariser: the weights kept are those of the epoch with the best
validation loss, and the training objective with its samples of z per row (the IWAE bound). The sizes were
fitted to held-out log-likelihoods of a grid on 13 tables (benchmarks/tabular_sizing.py), the latent dimension
and the objective revised on the paired figures of the tabular benchmark (benchmarks/tabular.py); both
measurements are in docs/tabular-defaults.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .config import TrainConfig

__all__ = ["TableSizes", "table_defaults", "SETTINGS", "as_flags"]

#: The settings the rule can choose (their names in :func:`bayesvae.runs.train`).
SETTINGS = ("hidden", "latent_dim", "batch_size", "epochs", "patience", "objective", "samples")

#: Minibatch size of the rule, and the optimiser steps that bound a run and that early stopping waits for.
BATCH_SIZE, MAX_STEPS, PATIENCE_STEPS = 64, 40_000, 600
MIN_EPOCHS, MAX_EPOCHS, MIN_PATIENCE, MAX_PATIENCE = 100, 3000, 30, 100
#: The training objective of the rule and its K samples of z per row (docs/tabular-defaults.md): in the tabular
#: benchmark the IWAE bound with K = 8 gained 0.2 to 0.5 nats per example over the ELBO on five of the eight
#: tables and lost 0.14 to 0.16 on three (within two standard errors), at about 1.5x the training time.
OBJECTIVE, SAMPLES = "iwae", 8


@dataclass(frozen=True)
class TableSizes:
    """What :func:`table_defaults` chose, with the rows and columns it chose from."""

    hidden: tuple[int, ...]
    latent_dim: int
    batch_size: int
    epochs: int
    patience: int
    objective: str
    samples: int
    n_rows: int
    n_columns: int

    def applied(self, which: Collection[str], config: TrainConfig) -> tuple[str, ...]:
        """The settings of ``which`` that the rule sets, given the user's ``config``: the objective only where no
        free bits ask for the ELBO, the samples only where the objective is then the IWAE bound (K samples of an
        ELBO given by the user stay theirs)."""
        unknown = set(which) - set(SETTINGS)
        if unknown:
            raise ValueError(f"table sizes: unknown setting(s) {sorted(unknown)}; choose among {list(SETTINGS)}")
        out = {k for k in which if k not in ("objective", "samples")}
        if "objective" in which and config.free_bits == 0:
            out.add("objective")
        objective = self.objective if "objective" in out else config.objective
        if "samples" in which and objective == "iwae":
            out.add("samples")
        return tuple(k for k in SETTINGS if k in out)

    def apply(self, which: Collection[str], hidden: Sequence[int], latent_dim: int,
              config: TrainConfig) -> tuple[tuple[int, ...], int, TrainConfig]:
        """(hidden, latent_dim, train config) with the settings named in ``which`` replaced by this rule's (those
        that :meth:`applied` keeps)."""
        which = self.applied(which, config)
        fields = {"batch_size": "batch_size", "epochs": "epochs", "patience": "early_stopping_patience",
                  "objective": "objective", "samples": "samples"}
        config = dataclasses.replace(config, **{fields[k]: getattr(self, k) for k in which if k in fields})
        return (self.hidden if "hidden" in which else tuple(hidden),
                self.latent_dim if "latent_dim" in which else latent_dim, config)

    def values(self) -> dict:
        return {"hidden": list(self.hidden), "latent_dim": self.latent_dim, "batch_size": self.batch_size,
                "epochs": self.epochs, "patience": self.patience, "objective": self.objective,
                "samples": self.samples}

    def record(self, which: Collection[str]) -> dict:
        """What run.json keeps: the values the rule chose (``which``: the settings it set, :meth:`applied`) and its
        inputs."""
        return {"chosen": {k: v for k, v in self.values().items() if k in which}, "n_rows": self.n_rows,
                "n_columns": self.n_columns, "rule": "bayesvae.sizing.table_defaults"}


#: The CLI flag of each setting (its value follows it; a list of widths is spelled out).
FLAGS = {"hidden": "--hidden", "latent_dim": "--latent-dim", "batch_size": "--batch-size", "epochs": "--epochs",
         "patience": "--patience", "objective": "--objective", "samples": "--samples"}


def as_flags(chosen: dict) -> str:
    """``{"hidden": [64], "latent_dim": 4}`` as ``--hidden 64 --latent-dim 4`` (run.json's ``chosen``)."""
    return " ".join(f"{FLAGS[k]} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                    for k, v in chosen.items())


def _latent_dim(n_columns: int) -> int:
    """d = ceil(D / 2), at least 4 and at most D (and 32). The first rule, ceil(D / 4), came from a grid of ELBO
    fits with a Gaussian decoder, where d = 2 cost 2.8-17 nats wherever D >= 20 and d = 4 was within 0.3 nats of
    the best on 4 to 13 columns; with the Student-t decoder and the IWAE bound, the benchmark's paired figures
    moved it to D / 2: +1.2 nats per example on breast cancer (30 columns, d 8 -> 15) and on digits (64, 16 -> 32),
    +0.5 on diabetes (10, 4 -> 5), +0.04 on wine, -0.15 on the manifold (20, 5 -> 10), the same d below 9 columns.
    Beyond 64 columns the rule is an extrapolation (capped at 32)."""
    return min(n_columns, 32, max(4, math.ceil(n_columns / 2)))


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
    return TableSizes((_width(latent_dim),), latent_dim, BATCH_SIZE, epochs, patience, OBJECTIVE, SAMPLES, n_rows,
                      n_columns)
