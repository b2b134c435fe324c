"""Choosing a table's sizes on its validation split: a small grid of widths and latent dimensions around the
rule of :mod:`bayesvae.sizing`, each candidate trained with the same seed and split, scored by the importance-
sampled log-likelihood of the validation rows (nats per example, in the data's units), the best kept.

Only the validation split decides; the test split is never read. Every candidate's figure is recorded (run.json's
``selection``; ``VAEDensity.selection_``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch

from .estimators import estimate_log_likelihood, eval_mode
from .model import VAE
from .sizing import TableSizes, as_flags
from .training import Callback, Trainer

__all__ = ["Candidate", "candidates", "validation_log_likelihood", "KeepBest", "VALID_SAMPLES"]

#: K importance samples of each validation row's log p(x) (the ranking of candidates, not a reported figure).
VALID_SAMPLES = 200


@dataclass(frozen=True)
class Candidate:
    hidden: tuple[int, ...]
    latent_dim: int

    def describe(self) -> str:
        return as_flags({"hidden": self.hidden, "latent_dim": self.latent_dim})


def candidates(sizes: TableSizes) -> list[Candidate]:
    """The grid around the rule's width w and latent dimension d: (w, d) first, then (w, d/2), (w, 2d) and (4w, d),
    the latent dimension between 1 and the number of columns, duplicates removed. The measurement behind the rule
    (docs/tabular-defaults.md) found the latent dimension to matter most and the width little, hence three latent
    dimensions and two widths; four fits keep ``--select`` at four times the cost of one."""
    w, d, cols = sizes.hidden[0], sizes.latent_dim, sizes.n_columns
    grid = [Candidate((w,), d), Candidate((w,), max(1, d // 2)), Candidate((w,), min(cols, 2 * d)),
            Candidate((4 * w,), d)]
    return list(dict.fromkeys(grid))


class KeepBest(Callback):
    """Keeps a copy of the weights of the epoch with the lowest validation loss (the trainer's ``best``), so that
    the model kept is the early-stopped one without a run directory."""

    def __init__(self):
        self.weights: dict | None = None

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.state.epochs_without_improvement == 0:
            self.weights = copy.deepcopy(trainer.model.state_dict())

    def restore(self, model: torch.nn.Module) -> None:
        if self.weights is not None:
            model.load_state_dict(self.weights)


def validation_log_likelihood(model: VAE, x_valid: torch.Tensor, seed: int = 0,
                              samples: int = VALID_SAMPLES) -> float:
    """Mean importance-sampled log p(x) of the (prepared) validation rows, nats per example, common random
    numbers from ``seed`` so that every candidate is scored with the same draws."""
    with eval_mode(model):
        ll = estimate_log_likelihood(model, x_valid, samples, batch_size=100, seed=seed, seeding="common")
    return float(ll.mean())


def select(fit: Callable[[Candidate], tuple[VAE, Trainer]], grid: list[Candidate],
           say: Callable[[str], None] | None = None) -> tuple[int, list[dict]]:
    """Fit each candidate (``fit`` returns the early-stopped model and its trainer), score it on the validation
    rows; returns (index of the best, one record per candidate)."""
    records = []
    for candidate in grid:
        model, trainer = fit(candidate)
        assert trainer.valid_data is not None and len(trainer.valid_data)  # the callers refuse tables without one
        value = validation_log_likelihood(model, trainer.valid_data.to(next(model.parameters()).device))
        records.append({"hidden": list(candidate.hidden), "latent_dim": candidate.latent_dim,
                        "valid_log_likelihood_nats": float(value), "epochs": trainer.state.epoch,
                        "best_valid_loss_nats": trainer.state.best_valid_loss})
        if say is not None:
            say(f"select: {candidate.describe()}: validation log-likelihood {value:.3f} nats per example "
                f"({trainer.state.epoch} epochs)")
    values = [cast(float, r["valid_log_likelihood_nats"]) for r in records]
    best = values.index(max(values))
    return best, records


def select_and_train(spec, *, out, say: Callable[[str], None] | None = None, **kwargs) -> Trainer:
    """``bayesvae train --select``: fit every candidate of :func:`candidates` in memory (same seed, split and
    other settings), score each on the validation split, then train the best into ``out`` (the same seed gives
    the same weights), with every candidate's figure in run.json (``selection``). ``kwargs``: those of
    :func:`bayesvae.runs.train`; ``hidden``/``latent_dim`` must be left to the selection (``table_sizes``)."""
    from . import runs
    from .errors import ConfigError
    from .sizing import table_defaults

    chosen_by_user = {"hidden", "latent_dim"} - set(kwargs.get("table_sizes", ()))
    if chosen_by_user:
        flags = " and ".join(f"--{n.replace('_', '-')}" for n in sorted(chosen_by_user))
        raise ConfigError(f"--select chooses --hidden and --latent-dim on the validation split; {flags} given too: "
                          "drop them, or drop --select")
    dataset = spec.load()
    if dataset.kind != "tabular":
        raise ConfigError(f"--select sizes the network of a table (rows of real-valued columns); {spec.source} holds "
                          f"{dataset.kind} data: drop --select")
    if len(dataset.valid) == 0:
        raise ConfigError("--select chooses on the validation split, and these data have none: give "
                          "--valid-fraction above 0 (or a 'valid' array in the .npz)")
    grid = candidates(table_defaults(len(dataset.train), dataset.event_shape[0]))
    rest = set(kwargs.pop("table_sizes")) - {"hidden", "latent_dim"}
    quiet = {k: v for k, v in kwargs.items() if k not in ("callbacks", "on_ready", "overwrite", "tensorboard")}

    def fit(candidate: Candidate) -> tuple[VAE, Trainer]:
        keep = KeepBest()
        quiet.update(hidden=candidate.hidden, latent_dim=candidate.latent_dim)
        trainer = runs.train(spec, out=None, table_sizes=rest, callbacks=[keep], **quiet)
        keep.restore(trainer.model)
        return cast(VAE, trainer.model), trainer

    if say is not None:
        say(f"select: {len(grid)} candidates, chosen on the validation split ({len(dataset.valid)} rows, K = "
            f"{VALID_SAMPLES} importance samples)")
    best, records = select(fit, grid, say)
    if say is not None:
        say(f"select: chose {grid[best].describe()}; training it into {out}")
    selection = {"candidates": records, "chosen": best, "criterion": "validation log-likelihood, nats per example "
                 f"(importance sampling, K = {VALID_SAMPLES}, common random numbers)"}
    kwargs.update(hidden=grid[best].hidden, latent_dim=grid[best].latent_dim)
    return runs.train(spec, out=out, table_sizes=rest, extra_state={"selection": selection}, **kwargs)
