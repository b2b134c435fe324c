"""Runs: data + model + trainer + run directory. Each CLI subcommand is one call into this module.

A run directory holds ``run.json`` (what was asked for), ``checkpoints/`` (self-describing: every checkpoint
carries the model and data configuration, so ``load`` needs nothing else) and ``metrics.jsonl``/``metrics.csv``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from . import checkpoint as ckpt
from . import data as bdata
from . import distributed as ranks
from . import draws, orders, rundir, sizing
from .arrays import PreparedRows, Rows, as_tensor, standardize_block
from .config import ModelConfig, TrainConfig, from_dict, to_dict
from .errors import ConfigError, IncompatibleCheckpointError, InputTypeError, OutputExistsError
from .model import VAE, build_model
from .objectives import LatentModel, TrainingObjective
from .precision import choose_precision
from .text import runs as text_hooks
from .training import Callback, Trainer, recalibrate_batch_norm

__all__ = ["DataSpec", "PreparedData", "prepare_data", "train", "resume", "load", "load_run", "LoadedRun",
           "load_preset", "PRESET_MODEL_KEYS", "export_model"]

RUN_FORMAT = 1
#: Fixed seeds of the one-off binarisation/dequantisation of validation and test data (protocol: never re-drawn),
#: and of the training split when it is scored (``evaluate --split train``).
VALID_SEED, TEST_SEED, TRAIN_SEED = 1, 2, 3


@dataclass(frozen=True)
class DataSpec:
    """Where a run's data come from; stored in checkpoints so that evaluation reloads the same splits."""

    source: str = "digits"
    data_dir: str | None = None
    seed: int = 0
    """The split seed (``--split-seed``): which examples go to train/valid/test. Separate from the training seed
    since runs made by this version; older runs stored their training seed here, and keep using it."""
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    limit: int | None = None
    label_column: str | None = None
    """A CSV column of class labels, taken out of the features."""
    vocab_size: int | None = None
    """Text: keep the most frequent words of the training split (None: all)."""
    max_length: int | None = None
    """Text: the longest sentence in words (None: the longest found, at most ``text.corpus.MAX_WORDS``)."""
    long_sentences: str = "refuse"
    """Text: ``refuse`` or ``cut`` sentences longer than ``max_length``."""
    image_shape: tuple[int, ...] | None = None
    """Flattened images (``--image-shape``): (H, W, C); None finds a square side; () keeps a table."""

    def load(self, vocabulary=None) -> bdata.Dataset:
        from .text.corpus import is_text_source, load_text

        if is_text_source(self.source):
            if self.label_column is not None:
                raise ConfigError("--label-column names a CSV column; text data have no labels")
            return load_text(self.source, seed=self.seed, valid_fraction=self.valid_fraction,
                             test_fraction=self.test_fraction, limit=self.limit, vocab_size=self.vocab_size,
                             max_length=self.max_length, long_sentences=self.long_sentences, vocabulary=vocabulary)
        for flag, value, default in (("--vocab-size", self.vocab_size, None), ("--max-length", self.max_length, None),
                                     ("--long-sentences", self.long_sentences, "refuse")):
            if value != default:
                raise ConfigError(f"{flag} applies to text data (a .txt file or a folder with train.txt), not to "
                                  f"{self.source!r}")
        return bdata.load_dataset(self.source, data_dir=self.data_dir, seed=self.seed,
                                  valid_fraction=self.valid_fraction, test_fraction=self.test_fraction,
                                  limit=self.limit, label_column=self.label_column, image_shape=self.image_shape)


@dataclass(frozen=True)
class PreparedData:
    """Splits ready for the likelihood, plus the per-batch transform of the training split."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None
    preparation: str
    """``none``, ``binarize`` (dynamic binarisation) or ``dequantize`` (uniform noise on the pixel levels)."""
    levels: int | None = None
    fixed_transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    """The one-off, seeded preparation of data that are scored rather than trained on (valid, test, new data)."""

    def scored(self, split: str) -> torch.Tensor:
        """A split as it is scored: valid and test as stored; the training split prepared once, like them, with a
        fixed seed (``TRAIN_SEED``), never the grey levels a Bernoulli decoder must not see."""
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be train, valid or test, got {split!r}")
        x = getattr(self, split)
        if split == "train" and self.fixed_transform is not None:
            return self.fixed_transform(x, TRAIN_SEED)
        return x


def _dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(k + u) / levels with k the integer level and u ~ U[0, 1): a density on [0, 1] for discrete pixels."""
    k = torch.round(x * (levels - 1))
    step = draws.current(rows=x.shape[0]) if generator is None else None
    u = (step.uniform(x.shape[1:], dtype=x.dtype).to(x.device) if step is not None
         else torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device))
    return (k + u) / levels


def preparation_for(dataset: bdata.Dataset, likelihood: str) -> str:
    if bdata.needs_binarization(dataset, likelihood):
        return "binarize"
    if dataset.kind in ("image", "binary") and likelihood != "bernoulli" and _levels(dataset) is not None:
        return "dequantize"  # discrete values: a density needs them spread over their bins
    return "none"


def _levels(dataset: bdata.Dataset) -> int | None:
    """The grid a density dequantises over: 2 for 0/1 data (their bits/dim are then those of the binary values,
    comparable with a Bernoulli decoder's), else the pixel levels found in the data."""
    return 2 if dataset.kind == "binary" else dataset.levels


def prepare_data(dataset: bdata.Dataset, likelihood: str) -> PreparedData:
    """Follow the likelihood: dynamic binarisation for a Bernoulli decoder on grey levels (a fresh draw each
    minibatch, one fixed-seed draw for validation and test); uniform dequantisation for a Gaussian decoder on
    discrete values (image pixels, 0/1 data), so that its density is bounded; nothing otherwise (tabular data
    were standardised by the loader)."""
    bdata.check_likelihood_support(dataset, likelihood)
    how = preparation_for(dataset, likelihood)
    if isinstance(dataset.valid, Rows) and how != "none":  # on disk: the fixed draws are made batch by batch
        levels = _levels(dataset) if how == "dequantize" else None
        batch = ((lambda x: bdata.binarize(x, validate=False)) if how == "binarize"
                 else (lambda x: _dequantize(x, levels)))
        return PreparedData(dataset.train, PreparedRows(dataset.valid, how, VALID_SEED, levels),
                            PreparedRows(dataset.test, how, TEST_SEED, levels), batch, how, levels,
                            fixed_transform=lambda x, seed: PreparedRows(x, how, seed, levels))
    if how == "binarize":
        return PreparedData(dataset.train, bdata.fixed_binarization(dataset.valid, VALID_SEED),
                            bdata.fixed_binarization(dataset.test, TEST_SEED),
                            lambda x: bdata.binarize(x, validate=False), how,
                            fixed_transform=bdata.fixed_binarization)
    if how == "dequantize":
        levels = _levels(dataset)
        assert levels is not None  # dequantised data are on a level grid

        def fixed(x, seed):
            return _dequantize(x, levels, torch.Generator().manual_seed(seed))
        return PreparedData(dataset.train, fixed(dataset.valid, VALID_SEED), fixed(dataset.test, TEST_SEED),
                            lambda x: _dequantize(x, levels), how, levels, fixed_transform=fixed)
    return PreparedData(dataset.train, dataset.valid, dataset.test, None, how)


# ------------------------------------------------------------------------------------------------------ presets
#: The model options a preset may set (the keyword arguments of ``train``).
PRESET_MODEL_KEYS = ("latent_dim", "hidden", "activation", "architecture", "likelihood", "likelihood_options")


def load_preset(name: str) -> dict:
    """A named preset (a JSON file shipped in ``bayesvae/presets``): {"description", "model", "train"}, validated."""
    from importlib import resources

    names = sorted(p.name[:-5] for p in resources.files("bayesvae").joinpath("presets").iterdir()
                   if p.name.endswith(".json"))
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; choose one of {names}")
    preset = json.loads(resources.files("bayesvae").joinpath("presets").joinpath(f"{name}.json").read_text())
    unknown = sorted(set(preset) - {"description", "model", "train"}) + sorted(
        set(preset.get("model", {})) - set(PRESET_MODEL_KEYS))
    if unknown:
        raise ConfigError(f"preset {name!r} has unknown keys {unknown}")
    from_dict(TrainConfig, preset.get("train", {}))  # validates
    return preset


# ----------------------------------------------------------------------------------------------------- run dirs
#: Where ``--overwrite`` sets the old run aside until the new one has committed its first checkpoint.
REPLACED = ".replaced"


def _settle_replaced(out: Path) -> None:
    """After training (or its failure): drop the old run set aside by ``--overwrite`` once the new run has a committed
    checkpoint; otherwise put the old run back, so a replacement that failed before its first commit loses nothing."""
    aside = out / REPLACED
    if not aside.is_dir():
        return
    if ckpt.list_checkpoints(out):
        shutil.rmtree(aside, ignore_errors=True)
        return
    for entry in out.iterdir():
        if entry.name not in (rundir.LOCK_NAME, REPLACED):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in aside.iterdir():
        entry.rename(out / entry.name)
    aside.rmdir()


def _prepare_run_dir(out: Path, overwrite: bool) -> rundir.RunLock:
    """Refuse an existing non-empty directory unless ``overwrite``, a file, or a directory inside a run; lock the
    run directory (a second writer fails), then clear it when overwriting; all before the first step.

    Returns the held lock (the caller releases it)."""
    rundir.check_directory_output(out, replacing_allowed="run")
    if out.exists() and any(out.iterdir()):
        holder = rundir.is_locked_by_other(out)
        if holder is not None:
            raise rundir.RunLockedError(f"{out} is being written by another process (pid {holder.get('pid')} on "
                                        f"{holder.get('host')}); choose another --out or wait for it to finish")
        if not overwrite:
            raise OutputExistsError(f"output directory {out} already exists and is not empty; pass --overwrite "
                                    "to replace it, --resume to continue it, or choose another --out")
        if not rundir.is_run_dir(out):
            raise OutputExistsError(f"{out} is not a bayesvae run directory; refusing to delete it with --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write to output directory {out}: {err.strerror or err}; "
                          "choose a writable --out") from None
    lock = rundir.RunLock(out).acquire()  # the atomic point: from here on, this process owns the directory
    try:
        if overwrite:  # the old run is set aside, not deleted, until the new one commits its first checkpoint
            aside = out / REPLACED
            keep_aside = aside.is_dir() and not ckpt.list_checkpoints(out)  # a replacement killed before its
            if aside.exists() and not keep_aside:                           # first commit: the old run is there
                shutil.rmtree(aside)
            aside.mkdir(exist_ok=True)
            for entry in out.iterdir():
                if entry.name in (rundir.LOCK_NAME, REPLACED):
                    continue
                try:
                    if keep_aside:
                        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                    else:
                        entry.rename(aside / entry.name)
                except FileNotFoundError:
                    pass  # gone already: e.g. the temporary file of a writer that just lost the race for the lock
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        lock.release()
        raise ConfigError(f"cannot write to output directory {out}: {err.strerror or err}; "
                          "choose a writable --out") from None
    except BaseException:
        lock.release()
        raise
    return lock


class _MetricsLog(Callback):
    """metrics.jsonl and metrics.csv, rewritten atomically from the history at the end of every epoch."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.run_dir is not None and ranks.is_main():
            _write_metrics(trainer.run_dir, trainer.state.history)


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    ckpt.atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    keys = list(dict.fromkeys(k for r in history for k in r))
    rows = [",".join(keys)] + [",".join(_csv(r.get(k)) for k in keys) for r in history]
    ckpt.atomic_write_text(run_dir / "metrics.csv", "\n".join(rows) + "\n")


class TensorBoardLog(Callback):
    """Scalars of every epoch record under ``RUN_DIR/tensorboard`` (needs the ``tensorboard`` extra)."""

    @staticmethod
    def writer_class():
        """SummaryWriter, or a clear error before anything is written when the extra is missing."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard (TensorBoard logging) needs the tensorboard package: "
                              "pip install 'bayesvae[tensorboard]'") from None
        return SummaryWriter

    def __init__(self, run_dir: Path):
        self.writer = self.writer_class()(str(Path(run_dir) / "tensorboard"))

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
        self.writer.flush()


def _csv(v) -> str:
    return "" if v is None else (repr(v) if isinstance(v, float) else str(v))


def _run_state(model_config: ModelConfig, spec: DataSpec, dataset: bdata.Dataset, prepared: PreparedData) -> dict:
    std = dataset.standardization
    return {
        "run_format": RUN_FORMAT,
        "model_config": to_dict(model_config),
        "data": {**spec.__dict__, "split_seed": spec.seed, "fingerprint": dataset.fingerprint(), "kind": dataset.kind,
                 "preparation": prepared.preparation, "levels": prepared.levels,
                 "standardization": None if std is None else [std[0].tolist(), std[1].tolist()],
                 "description": dataset.describe(), **text_hooks.run_state(dataset)},
    }


def _make_trainer(model: VAE, config: TrainConfig, prepared: PreparedData, run_dir: Path | None, run_state: dict,
                  callbacks: Sequence[Callback], on_warning: Callable[[str], None] | None = None) -> Trainer:
    if config.free_bits > 0 and not getattr(model.posterior_head, "factorised", False):
        raise ConfigError(f"free bits need a KL that splits into per-dimension terms; the "
                          f"{model.posterior_head.name} posterior's KL does not (for vmf it is a constant anyway): "
                          "drop --free-bits")
    # The library prepared these data itself: the objective checks their shape only (cost of the full check on a
    # training step: docs/reliability.md)
    objective = TrainingObjective(config.objective, config.samples, config.kl_warmup_epochs, config.free_bits,
                                  check_inputs=False)
    valid_objective = TrainingObjective(config.objective, config.samples, check_inputs=False)
    trainer = Trainer(model, objective, prepared.train, config, valid_data=prepared.valid, run_dir=run_dir,
                      batch_transform=prepared.batch_transform, valid_objective=valid_objective,
                      callbacks=[PreciseBatchNorm(), CollapseMonitor(on_warning), _MetricsLog(), *callbacks],
                      run_state=run_state)
    bucketed = text_hooks.bucketed(prepared.train, config.batch_size)  # text: length-bucketed batches
    if bucketed is not None:
        trainer.epoch_order = bucketed
    return trainer


class PreciseBatchNorm(Callback):
    """At the end of each training epoch, before validation, the running statistics of the batch-norm layers
    (VAE + BN) become the exact statistics of the whole training split under the current encoder, prepared as in
    training (binarised/dequantised with a fixed seed per epoch, so resume stays exact and the training RNG is
    untouched). Evaluation then normalises as the training batches did, without the lag of momentum averages."""

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        model = trainer.model
        if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return
        x, step = trainer.train_data, 1000

        def batches():  # the whole split on every rank (same seed, same statistics everywhere)
            for i in range(0, x.shape[0], step):
                xb = trainer._to_device(x[i : i + step])
                yield trainer.batch_transform(xb) if trainer.batch_transform is not None else xb

        device = trainer.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(trainer.config.seed * 1_000_003 + trainer.state.epoch + 17)
            recalibrate_batch_norm(model, batches(), lambda m, xb: cast(LatentModel, m).posterior(xb))


#: Training warns once when fewer than this share of the latent units are active after the KL warm-up.
ACTIVE_SHARE_WARNING = 0.5
#: ... and after this many epochs (or the run's last epoch, if it is shorter): units wake up in the first epochs
#: (the demo: 1 of 8 active after epoch 1, 5 after epoch 2, all 8 from epoch 5), so epoch 1 would cry wolf.
COLLAPSE_SETTLE_EPOCHS = 5


class CollapseMonitor(Callback):
    """Counts active units (Var_x E[z_u|x] > 0.01) on up to 1000 validation examples at the end of each epoch
    once the KL warm-up is over and the first ``COLLAPSE_SETTLE_EPOCHS`` epochs are done, records ``active_units``
    in the epoch record, and warns ONCE per run (through ``warn``) when fewer than ``share`` of the units are active:
    a sign of posterior collapse."""

    def __init__(self, warn: Callable[[str], None] | None, share: float = ACTIVE_SHARE_WARNING):
        self.warn, self.share = warn, share

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        from .estimators import active_units

        valid = trainer.valid_data
        settle = max(1.0, trainer.config.kl_warmup_epochs, min(COLLAPSE_SETTLE_EPOCHS, trainer.config.epochs))
        if valid is None or valid.shape[0] < 2 or record["epoch"] < settle:
            return
        model = cast(LatentModel, trainer.model)  # the VAE being trained
        count, variances = active_units(model, trainer._to_device(valid[:1000]))  # float, on the device
        record["active_units"] = count
        d = variances.numel()
        if count < self.share * d and not trainer.run_state.get("collapse_warned"):
            trainer.run_state["collapse_warned"] = True
            message = (f"only {count} of {d} latent units are active after epoch {record['epoch']} (fewer than "
                       f"{self.share:.0%}; Var_x E[z_u|x] <= 0.01)")
            if getattr(trainer.model.posterior_head, "factorised", False):
                message += (": the posterior is collapsing onto the prior in the others. Remedies: --posterior-bn "
                            "tau=0.5, --free-bits 0.1, --kl-warmup, or the vmf posterior (--posterior vmf --kappa "
                            "K), whose KL cannot vanish")
            else:
                message += ": the encoder uses few directions of the latent space (a larger --kappa spends more KL)"
            if self.warn is not None and ranks.is_main():  # once per run, not once per process
                self.warn(message)


#: Training examples a likelihood sees to set its data-dependent starting values.
INIT_EXAMPLES = 10_000


def _initialize_from_data(model: VAE, prepared: PreparedData) -> None:
    """Data-dependent starting values (a learned σ starts at the data's spread), from the first training examples
    prepared as a batch is; the global random stream is left as it was, so the run's draws do not change."""
    x = as_tensor(prepared.train[:INIT_EXAMPLES])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = prepared.batch_transform(x) if prepared.batch_transform is not None else x
    model.likelihood_head.initialize_from_data(x.to(next(model.parameters()).device))


def _refuse_constant_columns(dataset: bdata.Dataset) -> None:
    """A feature constant in the training split has no density to learn (its standardised values elsewhere would be
    divided by a zero scale): refuse before training, naming the columns."""
    constant = dataset.describe().get("constant_columns") or []
    if constant:
        raise bdata.DataValidationError(
            f"{dataset.name}: column(s) {constant} take a single value in the training split "
            f"({len(dataset.train)} example(s)), so the model cannot give a density to any other value of them "
            "(a test row with another value would get an NLL near 1e20). Drop these columns, or provide more rows; "
            "if each row is a flattened image, say its shape with --image-shape H W [C]")


def train(spec: DataSpec, *, out: str | Path | None, train_config: TrainConfig = TrainConfig(),
          likelihood: str | None = None, likelihood_options: dict | None = None, latent_dim: int = 20,
          architecture: str = "mlp", hidden: Sequence[int] = (400,), activation: str = "relu",
          overwrite: bool = False, callbacks: Sequence[Callback] = (), tensorboard: bool = False,
          on_ready: Callable[[Trainer, bdata.Dataset, str], None] | None = None,
          device: str | torch.device = "cpu", posterior: str = "diagonal-gaussian",
          posterior_options: dict | None = None, on_warning: Callable[[str], None] | None = None,
          table_sizes: Collection[str] = (), extra_state: dict | None = None) -> Trainer:
    """Load and validate the data, build the model the data call for, and train it (into ``out`` if given).

    ``posterior``/``posterior_options``: see :class:`ModelConfig` (``vmf`` with ``{"kappa": K}``; the Gaussian
    with ``{"bn_gamma": G}`` or ``{"bn_tau": T}``). ``on_ready(trainer, dataset, likelihood)`` is called after every
    check passed and before the first step (the CLI prints the chosen likelihood there); ``on_warning(text)``
    receives training warnings (e.g. posterior collapse). ``device``: see
    :func:`bayesvae.distributed.resolve_device`. Under torchrun (after :func:`bayesvae.distributed.init_from_env`)
    every rank calls this; rank 0 writes.

    ``table_sizes``: the settings among :data:`bayesvae.sizing.SETTINGS` that the user left unset; on a table
    they are chosen from its rows and columns (:func:`bayesvae.sizing.table_defaults`) and recorded in run.json
    (``table_sizes``); on other data the values given stand. ``extra_state``: more JSON-able records for run.json
    (the candidates of a selection).
    """
    if tensorboard:
        if out is None:
            raise ConfigError("TensorBoard logging needs a run directory (--out)")
        TensorBoardLog.writer_class()
    if spec.data_dir is not None and spec.source != "mnist":
        raise ConfigError(f"--data-dir has no effect for {spec.source!r}: it is the directory of the MNIST files")
    if out is not None:
        rundir.check_directory_output(out, replacing_allowed="run")
    if architecture == "conv" and len(tuple(hidden)) > 1:
        raise ConfigError(f"--hidden {' '.join(map(str, hidden))}: the conv architecture has one fully connected "
                          "layer between the convolutions and the latent code, so it takes one width (e.g. "
                          "--hidden 256); several widths are for --architecture mlp")
    spec = rundir.absolute_spec(spec)
    dataset = spec.load()
    if architecture == "conv":
        _check_conv_fits(dataset.event_shape)
    _refuse_constant_columns(dataset)
    architecture, likelihood, likelihood_options = text_hooks.model_settings(dataset, architecture, likelihood,
                                                                             dict(likelihood_options or {}), hidden)
    likelihood = likelihood or bdata.default_likelihood(dataset)
    check_likelihood_options(likelihood, likelihood_options or {})
    sizes = None
    if table_sizes and dataset.kind == "tabular":
        sizes = sizing.table_defaults(len(dataset.train), dataset.event_shape[0], len(dataset.valid) > 0)
        table_sizes = sizes.applied(table_sizes, train_config)  # (K samples stay the user's under their ELBO)
        if not table_sizes:
            sizes = None
        else:
            hidden, latent_dim, train_config = sizes.apply(table_sizes, hidden, latent_dim, train_config)
    prepared = prepare_data(dataset, likelihood)
    model_config = ModelConfig(data_shape=dataset.event_shape, latent_dim=latent_dim, architecture=architecture,
                               hidden=tuple(hidden), activation=activation, likelihood=likelihood,
                               likelihood_options=dict(likelihood_options or {}), posterior=posterior,
                               posterior_options=dict(posterior_options or {}),
                               standardized=dataset.standardization is not None)
    run_dir = Path(out) if out is not None else None
    device = ranks.resolve_device(device)
    _check_world(train_config)
    _check_model_fits(model_config, train_config)
    torch.manual_seed(train_config.seed)
    model = build_model(model_config).to(device)
    if dataset.standardization is not None:
        assert model.data_log_scale is not None  # model_config.standardized
        with torch.no_grad():
            model.data_log_scale.copy_(dataset.standardization[1].reshape(model.data_log_scale.shape).log())
    _initialize_from_data(model, prepared)
    if ranks.rank() > 0:  # the same initial weights on every rank, then a random stream of its own
        torch.manual_seed(train_config.seed * 1_000_003 + 7919 * ranks.rank())
    state = _run_state(model_config, spec, dataset, prepared)
    state["kl_bound"] = kl_bound_record(model)
    if sizes is not None:
        state["table_sizes"] = sizes.record(table_sizes)
    state.update(extra_state or {})
    if train_config.free_bits > 0 and not getattr(model.posterior_head, "factorised", False):
        _make_trainer(model, train_config, prepared, None, state, ())  # raises the clear error before any output
    if train_config.precision == "auto":
        objective = TrainingObjective(train_config.objective, train_config.samples, train_config.kl_warmup_epochs)
        chosen, state["precision_choice"] = choose_precision(model, objective, prepared.train, train_config,
                                                             batch_transform=prepared.batch_transform)
        train_config = dataclasses.replace(train_config, precision=chosen)
    train_config, state["data_order"] = _resolve_order(train_config, prepared, prepared.train.dtype == torch.int64)
    held: list[rundir.RunLock] = []
    if run_dir is not None:
        def prepare():
            lock = _prepare_run_dir(run_dir, overwrite)  # held by rank 0 (the writer) until training ends
            try:
                ckpt.atomic_write_text(run_dir / "run.json", json.dumps(
                    {**state, "train_config": to_dict(train_config)}, indent=2))
            except BaseException:
                lock.release()
                raise
            held.append(lock)
        ranks.run_on_main(prepare)
    try:
        if tensorboard and ranks.is_main():
            assert run_dir is not None  # refused above without one
            callbacks = [*callbacks, TensorBoardLog(run_dir)]
        trainer = _make_trainer(model, train_config, prepared, run_dir, state, callbacks, on_warning)
        if on_ready is not None:
            on_ready(trainer, dataset, likelihood)
        trainer.fit()
    finally:
        if held:  # the writer: an old run set aside by --overwrite goes, or comes back if nothing was committed
            assert run_dir is not None  # only a run directory is locked
            _settle_replaced(run_dir)
        for lock in held:
            lock.release()
    return trainer


def kl_bound_record(model: VAE) -> dict | None:
    """The lower bound on the expected KL that the posterior's construction guarantees (VAE + BN), or the constant
    KL of a fixed-κ vMF, as stored in run.json: {"form", "nats", "nats_per_dim", "kind"}; None for a plain VAE."""
    head = model.posterior_head
    bound = head.kl_bound() if hasattr(head, "kl_bound") else None
    if bound is None:
        return None
    kind = "constant" if not getattr(head, "factorised", True) else "floor of the mean KL over training batches"
    return {"form": head.describe(), "kind": kind, "nats": bound, "nats_per_dim": bound / model.latent_dim}


def _resolve_order(config: TrainConfig, prepared: PreparedData, text: bool) -> tuple[TrainConfig, dict]:
    """The data order of a new run, resolved (``auto`` chooses from where the training split is) and stored in its
    configuration, so that a resumed run keeps it whatever memory it finds; with the reason, printed."""
    if text:
        if config.data_order == "block":
            raise ConfigError("--data-order block is for examples read from a file; sentences are batched by length "
                              "(their own order): drop it")
        return config, {"order": "length-bucketed", "describe": "length-bucketed batches of sentences"}
    choice = orders.resolve(config.data_order, prepared.train, config.block_rows, config.window_blocks)
    config = dataclasses.replace(config, data_order=choice.order, block_rows=choice.block_rows,
                                 window_blocks=choice.window_blocks)
    return config, {"order": choice.order, "describe": choice.describe()}


def _check_model_fits(config: ModelConfig, train_config: TrainConfig) -> None:
    """Refuse a model whose weights, gradients and Adam moments cannot fit (counted on the meta device, which
    allocates nothing), with the activations of a batch, before anything is allocated or written."""
    from . import memory

    with torch.device("meta"):
        meta = build_model(config)
    params = sum(p.numel() for p in meta.parameters())
    widest = max((*config.hidden, math.prod(config.data_shape), config.latent_dim))
    activations = 4 * 4 * train_config.batch_size * max(1, train_config.samples) * widest * (len(config.hidden) + 2)
    memory.require("the model", 16 * params + activations, f"a model of {params:,} parameters (--hidden "
                   f"{' '.join(map(str, config.hidden))}) with its gradients and optimiser state",
                   "Use smaller --hidden widths (or a smaller --batch-size)")


def _check_world(config: TrainConfig) -> None:
    """The global batch must split evenly over the ranks: refused on every rank before anything is written."""
    w = ranks.world_size()
    if config.batch_size % w:
        raise ConfigError(f"--batch-size {config.batch_size} is the global batch and must divide by the {w} "
                          f"processes; use a multiple of {w} (e.g. {config.batch_size - config.batch_size % w or w})")


def _check_conv_fits(shape: tuple[int, ...]) -> None:
    """The conv stack halves each side twice (kernel 4, stride 2, padding 1): images need 4 px a side."""
    channels = len(ModelConfig(data_shape=(1, 4, 4)).conv_channels)
    need = 2 ** channels
    if len(shape) != 3 or min(shape[1:]) < need:
        what = "x".join(map(str, shape[1:])) + " px images" if len(shape) == 3 else f"vectors of shape {shape}"
        raise ConfigError(f"--architecture conv needs images of at least {need}x{need} px ({channels} stride-2 "
                          f"convolutions); these data are {what}: use --architecture mlp")


def check_likelihood_options(likelihood: str, options: dict) -> None:
    """Each option is a keyword of the likelihood and has the type of its default (``{"optimal": "yes"}`` is
    refused, not taken as true)."""
    import inspect

    from .likelihoods import LIKELIHOODS

    if likelihood not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {likelihood!r}; choose one of {sorted(LIKELIHOODS)}")
    params = {n: p.default for n, p in inspect.signature(LIKELIHOODS[likelihood].__init__).parameters.items()
              if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key, value in options.items():
        if key not in params:
            others = sorted(n for n, c in LIKELIHOODS.items() if key in inspect.signature(c.__init__).parameters)
            hint = f"; {key!r} is an option of {', '.join(others)} (--likelihood)" if others else ""
            raise ConfigError(f"likelihood option {key!r}: the {likelihood} likelihood takes "
                              f"{sorted(params) or 'no options'}{hint}")
        default = params[key]
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            want = "a finite number"
        else:
            ok, want = True, ""
        if not ok:
            raise ConfigError(f"likelihood option {key!r} must be {want}, got {json.dumps(value)}")


# ------------------------------------------------------------------------------------------------------- loading
@dataclass
class LoadedRun:
    model: VAE
    model_config: ModelConfig
    train_config: TrainConfig
    spec: DataSpec
    state: dict
    tensors: dict
    checkpoint: Path
    notes: list = dataclasses.field(default_factory=list)
    """Warnings found while loading (e.g. data that differ from the training data); the CLI prints them."""
    say: Callable[[str], None] | None = None

    def dataset(self) -> bdata.Dataset:
        """The run's data, reloaded (from where ``--data``/``--data-dir`` point, if given); a fingerprint that
        differs from the stored one gives a warning (in ``notes``, and through ``say``)."""
        ds = _load_moved(self.spec, text_hooks.vocabulary_of(self.state))
        where = self.spec.data_dir if self.spec.source == "mnist" and self.spec.data_dir else self.spec.source
        note = rundir.compare_fingerprint(self.state.get("data", {}).get("fingerprint"), ds.fingerprint(), where)
        if note and note not in self.notes:
            self.notes.append(note)
            if self.say is not None:
                self.say(note)
        return ds

    def prepared(self, dataset: bdata.Dataset | None = None) -> PreparedData:
        return prepare_data(dataset or self.dataset(), self.model_config.likelihood)

    def new_data(self, source: str, data_dir: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Other data (e.g. to score for anomalies) prepared exactly as this run's test split: the run's
        standardisation statistics, its fixed-seed binarisation or dequantisation. Returns (x, rows): the prepared
        examples and their 0-based rows in the source. Data the run's preparation cannot turn into what the model
        was trained on are refused with the reason: other columns (by header), values off the run's grid of
        levels, grey levels for a model trained on 0/1 data."""
        if text_hooks.vocabulary_of(self.state) is not None:  # text: the run's vocabulary and row width
            x, rows, info = text_hooks.new_text(source, self.state, self.model_config.data_shape[0],
                                                self.spec.long_sentences)
            if self.say is not None:
                assert info is not None  # load_text counts the words
                self.say(f"{source}: {info['words']['train']} words, {info['unknown_words']['train']} of them not in "
                         "the run's vocabulary (scored as <unk>)")
            return x, rows
        label = self.spec.label_column
        if label is not None and label not in _csv_header(source):
            label = None  # new data without the label column: nothing to take out
        ds = bdata.load_dataset(source, data_dir=data_dir, valid_fraction=0.0, test_fraction=0.0, standardize=False,
                                label_column=label, image_shape=self.spec.image_shape)
        if isinstance(ds.train, Rows):  # a large file stays on disk: prepared a batch at a time as it is scored
            return self._new_rows(source, ds), ds.rows("train")
        x = torch.cat([as_tensor(t) for t in (ds.train, ds.valid, ds.test)])
        rows = np.concatenate([ds.rows("train"), ds.rows("valid"), ds.rows("test")])
        data = self.state["data"]
        _check_columns(source, ds.feature_names, (data.get("description") or {}).get("feature_names"))
        if tuple(x.shape[1:]) != self.model_config.data_shape:
            raise bdata.DataValidationError(f"{source}: examples have shape {tuple(x.shape[1:])}, but the model was "
                                            f"trained on shape {self.model_config.data_shape}")
        std = data.get("standardization")
        if std is not None:  # as the training rows were, in float64 (the same values as a file scored from disk)
            x = torch.from_numpy(standardize_block(x.numpy(), *_stored_standardization(std)))
        how = data.get("preparation", "none")
        if how == "binarize":
            bdata.check_likelihood_support(dataclasses.replace(ds, train=x), self.model_config.likelihood)
            return bdata.fixed_binarization(x, TEST_SEED), rows
        if how == "dequantize":
            levels = data["levels"]
            if not bdata.on_level_grid(x, levels):
                raise bdata.DataValidationError(
                    f"{source}: the run dequantises data on a grid of {levels} levels k/{levels - 1} in [0, 1], but "
                    "these values are not on it (scoring would silently move them onto it). Give data with the "
                    "same levels as the training data (e.g. 8-bit images as uint8 or k/255)")
            return _dequantize(x, levels, torch.Generator().manual_seed(TEST_SEED)), rows
        bdata.check_likelihood_support(dataclasses.replace(ds, train=x), self.model_config.likelihood)
        if self.model_config.likelihood == "bernoulli" and not bool(((x == 0) | (x == 1)).all()):
            raise bdata.DataValidationError(
                f"{source}: the run was trained on 0/1 data with a Bernoulli likelihood, which gives no probability "
                "to other values, but these data hold values strictly between 0 and 1. Binarise them first (e.g. "
                "x > 0.5, or numpy's random draw x > rand for the dynamic-binarisation protocol), then score them")
        return x, rows

    def _new_rows(self, source: str, ds: bdata.Dataset):
        """``new_data`` for a file that stays on disk: the same checks, made in chunks; the preparation lazy."""
        if tuple(ds.event_shape) != self.model_config.data_shape:
            raise bdata.DataValidationError(f"{source}: examples have shape {tuple(ds.event_shape)}, but the model "
                                            f"was trained on shape {self.model_config.data_shape}")
        data = self.state["data"]
        how = data.get("preparation", "none")
        if data.get("standardization") is not None:  # a table: standardised as each batch is read
            _check_columns(source, ds.feature_names, (data.get("description") or {}).get("feature_names"))
            rows = cast(Rows, ds.train)  # a file that stays on disk: its splits are Rows
            return Rows(rows.array, rows.index, rows.layout, pixels=rows.pixels,
                        standardization=_stored_standardization(data["standardization"]))
        bdata.check_likelihood_support(ds, self.model_config.likelihood)
        if how == "dequantize" and not bdata.on_level_grid(ds.train, data["levels"]):
            raise bdata.DataValidationError(
                f"{source}: the run dequantises data on a grid of {data['levels']} levels, but these values are not "
                "on it. Give data with the same levels as the training data (e.g. 8-bit images as uint8 or k/255)")
        if how in ("binarize", "dequantize"):
            return PreparedRows(ds.train, how, TEST_SEED, data.get("levels"))  # type: ignore[arg-type]  # Rows here
        if self.model_config.likelihood == "bernoulli" and ds.kind != "binary":
            raise bdata.DataValidationError(
                f"{source}: the run was trained on 0/1 data with a Bernoulli likelihood, but these data hold values "
                "strictly between 0 and 1. Binarise them first, then score them")
        return ds.train


def _stored_standardization(std) -> tuple[np.ndarray, np.ndarray]:
    """A run's stored (mean, std) (float32 values) as the float64 arrays that standardise new rows."""
    return (np.asarray(std[0], dtype=np.float32).astype(np.float64),
            np.asarray(std[1], dtype=np.float32).astype(np.float64))


def _csv_header(source: str) -> tuple[str, ...]:
    """The header names of a CSV file (empty when it has none, or is not a readable CSV: the loader says why)."""
    import csv

    if not str(source).lower().endswith(".csv"):
        return ()
    try:
        with open(source, newline="", encoding="utf-8-sig") as fh:
            first = next((row for row in csv.reader(fh) if row and any(c.strip() for c in row)), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return ()
    return () if any(bdata._is_number(c) for c in first) else tuple(c.strip() for c in first)


def _check_columns(source: str, found, expected) -> None:
    """Columns are matched by name, never trusted by position: a swapped or missing column is refused."""
    if expected is None:
        return
    expected = [str(n) for n in expected]
    if found is None:
        if not str(source).lower().endswith(".csv"):
            raise bdata.DataValidationError(
                f"{source}: the run was trained on a CSV file with the named columns {expected}, and this file "
                "carries no column names, so its columns cannot be matched to them. Give a CSV file with that header "
                "line and these columns")
        raise bdata.DataValidationError(
            f"{source}: the run was trained on named columns {expected}, but this file has no header line, so "
            "their order cannot be checked. Add the header line")
    found = [str(n) for n in found]
    if found == expected:
        return
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    if missing or extra:
        problem = (f"missing column(s) {missing}" if missing else "") + ("; " if missing and extra else "") + (
            f"column(s) {extra} that the model was not trained on" if extra else "")
    else:
        moved = [n for i, n in enumerate(found) if expected[i] != n]
        problem = f"the columns {moved} are in another order than in training"
    raise bdata.DataValidationError(
        f"{source}: {problem}. The model was trained on the columns {expected}, in this order; give a file with "
        "exactly these columns (a label column must be removed)")


def _load_moved(spec: DataSpec, vocabulary=None) -> bdata.Dataset:
    """Load a run's data; a missing file or MNIST directory says how to point the run at where they are now."""
    if spec.source not in ("digits", "mnist") and not Path(spec.source).exists():
        raise bdata.DataValidationError(f"the run's data {spec.source} no longer exist; if they moved, point the "
                                        "run at them with --data NEW_PATH")
    try:
        return spec.load(vocabulary) if vocabulary is not None else spec.load()
    except (FileNotFoundError, bdata.DataValidationError) as err:
        if spec.source != "mnist":
            raise
        raise bdata.DataValidationError(f"{err}; if the MNIST files moved, point the run at them with --data-dir "
                                        "NEW_DIR") from None


def _spec_from_state(data: dict) -> DataSpec:
    keys = {f for f in DataSpec.__dataclass_fields__}
    return DataSpec(**{k: v for k, v in data.items() if k in keys})


def _load_committed(run_dir: str | Path, which: str, allow_nonfinite: bool) -> tuple[Path, dict, dict]:
    """Resolve and load a checkpoint; when a running training moved the pointer and rotated the step away
    between the two (a reader racing a writer), resolve again: a reader never fails because a writer committed."""
    for attempt in range(5):
        before = ckpt.list_checkpoints(run_dir) if Path(run_dir).is_dir() else []
        path = ckpt.resolve_checkpoint(run_dir, which)
        try:
            tensors, state = ckpt.load_checkpoint(path, allow_nonfinite=allow_nonfinite)
            return path, tensors, state
        except ckpt.CheckpointError:
            if attempt == 4 or path.exists() and ckpt.list_checkpoints(run_dir) == before:
                raise
    raise AssertionError("unreachable")


def _with_data_scale(config: ModelConfig, data: dict, model_sd: dict) -> ModelConfig:
    """Runs saved before the model held its data's scales (their densities were of the standardised features): give
    the model the scales of run.json, so that every density is that of the user's data."""
    if config.standardized:
        return config
    if "data_log_scale" not in model_sd:
        std = data.get("standardization")
        if std is None:
            return config
        model_sd["data_log_scale"] = torch.tensor(std[1], dtype=torch.float32).reshape(config.data_shape).log()
    return dataclasses.replace(config, standardized=True)


def load_run(run_dir: str | Path, which: str = "best", *, allow_nonfinite: bool = False,
             data_dir: str | None = None, device: str | torch.device = "cpu", data: str | None = None,
             say: Callable[[str], None] | None = None) -> LoadedRun:
    """Rebuild the model and configuration from a checkpoint alone (``which``: best, last, or a step dir).

    ``data`` replaces the stored data file and ``data_dir`` the stored MNIST directory (a run or exported model
    evaluated after its data moved, or on another machine); each is refused where it has no effect. The data
    are checked against the stored fingerprint when loaded (:meth:`LoadedRun.dataset`).
    Checkpoints hold CPU tensors whatever device trained them; the model is moved to ``device`` after loading.
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise InputTypeError(f"run_dir must be the path of a run directory (str or os.PathLike), got "
                             f"{type(run_dir).__name__}")
    if not isinstance(which, str):
        raise InputTypeError(f"which must be 'best', 'last' or a step directory's name, got {type(which).__name__}")
    path, tensors, state = _load_committed(run_dir, which, allow_nonfinite)
    for key in ("model_config", "train_config", "data"):
        if key not in state:
            raise ckpt.CheckpointCorruptError(f"{path}: state.json lacks {key!r}; not a bayesvae training checkpoint")
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model_config = from_dict(ModelConfig, state["model_config"])
        # a run written before the data order was a setting trained in the full shuffle: resume keeps it
        train_config = from_dict(TrainConfig, {"data_order": "full", **state["train_config"]})
        model_config = _with_data_scale(model_config, state["data"], model_sd)
        model = build_model(model_config)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:  # a tampered configuration
        raise IncompatibleCheckpointError(f"{path}: the stored configuration cannot be built: {err}") from None
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as err:
        raise IncompatibleCheckpointError(f"{path}: weights do not fit the stored model configuration: "
                                          f"{str(err).splitlines()[0]}") from None
    model.to(ranks.resolve_device(device)).eval()
    spec = rundir.relocated_spec(_spec_from_state(state["data"]), data, data_dir)
    return LoadedRun(model, model_config, train_config, spec, state, tensors, path, say=say)


def export_model(run_dir: str | Path, out: str | Path, which: str = "best", *, overwrite: bool = False) -> Path:
    """Write the model of a run's checkpoint, without optimiser or trainer state, as a small run directory that
    ``load``, ``evaluate`` and the other subcommands accept (for publishing a model)."""
    out = Path(out)
    rundir.check_directory_output(out, replacing_allowed="export")
    run = load_run(run_dir, which)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out} already exists and is not empty; pass --overwrite or choose another --out")
        if not (out / "run.json").exists():
            raise OutputExistsError(f"{out} is not a bayesvae run directory; refusing to replace it")
    tensors = {k: v for k, v in run.tensors.items() if k.startswith("model.")}
    state = {k: run.state[k] for k in ("run_format", "model_config", "train_config", "data") if k in run.state}
    state["exported_from"] = {"checkpoint": run.checkpoint.name,
                              "epoch": run.state.get("trainer", {}).get("epoch")}
    step = int(run.checkpoint.name.split("-")[-1]) if run.checkpoint.name.startswith("step-") else 0
    # built complete in a temporary sibling, then swapped in: a kill or a full disk never leaves half an export
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = ckpt._tmp_name(out.parent, out.name), None
    try:
        tmp.mkdir()
        ckpt.atomic_write_text(tmp / "run.json", json.dumps(state, indent=2))
        ckpt.save_checkpoint(tmp, step, tensors, state, tags=("last", "best"))
        if out.exists():
            old = ckpt._tmp_name(out.parent, f"old-{out.name}")
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.rename(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return ckpt.resolve_checkpoint(out, "last")


def load(run_dir: str | Path, which: str = "best", *, device: str | torch.device = "cpu") -> VAE:
    """The trained model of a run directory, in eval mode, on ``device``:
    ``model = bayesvae.load("runs/digits", device="cuda")``."""
    return load_run(run_dir, which, device=device).model


#: TrainConfig fields ``resume`` may change: they extend or steer a run without changing its arithmetic so far.
RESUMABLE = ("epochs", "max_seconds", "early_stopping_patience", "checkpoint_every_steps", "precision")


def resume(run_dir: str | Path, *, epochs: int | None = None, max_minutes: float | None = None,
           patience: int | None = None, checkpoint_every: int | None = None, precision: str | None = None,
           data: str | None = None, data_dir: str | None = None, callbacks: Sequence[Callback] = (),
           on_ready: Callable[[Trainer, bdata.Dataset, str], None] | None = None,
           say: Callable[[str], None] | None = None, device: str | torch.device = "cpu",
           on_warning: Callable[[str], None] | None = None) -> Trainer:
    """Continue a stopped run from its last complete checkpoint (on ``device``; ``on_warning``: see ``train``).

    Only what extends or steers the run may change: ``epochs`` (the new total; a schedule that depends on it, such
    as cosine, is stretched and ``say`` tells how), ``max_minutes`` (a budget for this session, added to the time
    already trained), ``patience``, ``checkpoint_every`` and ``precision``. ``data``/``data_dir`` point the run at
    moved data, which must have the stored fingerprint. A run stopped early (time budget, patience) continues
    when the new setting allows it.
    """
    say = say or (lambda msg: None)
    run_path = Path(run_dir)
    if rundir.is_run_dir(run_path) and not ckpt.list_checkpoints(run_path):
        raise ckpt.CheckpointNotFoundError(
            f"{run_path} has no checkpoint: training stopped before its first step was committed, so there is "
            f"nothing to resume; start it again with `bayesvae train ... --out {run_path} --overwrite`")
    lock = rundir.RunLock(run_path, "train --resume") if ranks.is_main() else contextlib.nullcontext()
    with lock:
        run = load_run(run_path, "last", data=data, data_dir=data_dir, device=device)
        dataset = _load_moved(run.spec, text_hooks.vocabulary_of(run.state))
        fingerprint = run.state["data"].get("fingerprint")
        if dataset.fingerprint() != fingerprint:
            raise IncompatibleCheckpointError(
                f"the data of {run.spec.source!r} differ from those this run was trained on (fingerprint "
                f"{dataset.fingerprint()[:12]}... vs {fingerprint[:12]}...); resume needs the same data: restore "
                "them, point --data/--data-dir at them, or start a new run")
        config, trainer_state = run.train_config, run.state.get("trainer", {})
        done = trainer_state.get("epoch", 0)
        changes: dict[str, Any] = {}
        if epochs is not None:
            if epochs < done or (epochs == done and trainer_state.get("step_in_epoch", 0)):
                raise ConfigError(f"--epochs {epochs}: this run has already trained {done} epochs; --epochs is the "
                                  f"new total, so give more than {done}")
            changes["epochs"] = epochs
        if max_minutes is not None:
            spent = float(trainer_state.get("train_seconds", 0.0))
            changes["max_seconds"] = spent + 60.0 * max_minutes if max_minutes > 0 else 0.0
            if max_minutes > 0:
                say(f"time budget: {max_minutes:g} more minutes of training (after {spent / 60:.1f} already)")
        if patience is not None:
            changes["early_stopping_patience"] = patience
        if checkpoint_every is not None:
            changes["checkpoint_every_steps"] = checkpoint_every
        if precision is not None and precision != config.precision:
            if "fp16" in (precision, config.precision) or precision == "auto":
                raise ConfigError(f"--precision {precision}: with --resume, precision may change between float32 "
                                  f"and bf16 only (this run trains in {config.precision}; fp16 keeps a gradient "
                                  "scaler and auto chooses at the start of a run)")
            changes["precision"] = precision
        new = from_dict(TrainConfig, {**to_dict(config), **changes})
        _check_world(new)
        if new.epochs != config.epochs:
            _say_schedule_change(config, new, run, say)
        prepared = run.prepared(dataset)
        state = {k: v for k, v in run.state.items() if k in ("run_format", "model_config", "data", "kl_bound",
                                                              "collapse_warned", "data_order")}
        run.model.train()
        trainer = _make_trainer(run.model, new, prepared, run_path, state, callbacks, on_warning)
        trainer.load_state(run.tensors, run.state)
        st = trainer.state
        if st.history and ranks.is_main():  # metrics follow the checkpoint (a failed metrics write is repaired)
            _write_metrics(run_path, st.history)
        if max_minutes is not None:
            st.planned_steps = 0  # a new budget: the trainer plans the steps that fit again
        if st.stopped_early and (max_minutes is not None or patience is not None):  # may let it go on
            patience_stop = new.early_stopping_patience and st.epochs_without_improvement >= new.early_stopping_patience
            time_stop = new.max_seconds and st.train_seconds >= new.max_seconds
            st.stopped_early = bool(patience_stop or time_stop)
            if not st.stopped_early:
                say("continuing a run that had stopped early (the new settings allow more training)")
        if st.stopped_early:
            say(f"nothing to do: this run stopped early after {st.epoch} epochs; pass a larger --patience (0: off) "
                "or --max-minutes to let it go on")
        elif st.epoch >= new.epochs:
            say(f"nothing to do: this run has trained all {new.epochs} epochs; pass --epochs N (N > {new.epochs}) "
                "to train longer")
        if on_ready is not None:
            on_ready(trainer, dataset, run.model_config.likelihood)
        trainer.fit()
    return trainer


def _say_schedule_change(old: TrainConfig, new: TrainConfig, run: LoadedRun, say: Callable[[str], None]) -> None:
    from .training import learning_rate_at

    say(f"epochs: {old.epochs} -> {new.epochs} in total")
    if old.lr_schedule != "cosine":
        return
    st = run.state.get("trainer", {})
    steps, per_epoch = st.get("global_step", 0), None
    n = (run.state.get("data", {}).get("description", {}).get("splits", {}) or {}).get("train")
    if n:
        per_epoch = math.ceil(n / old.batch_size)
    progress = steps / per_epoch if per_epoch else float(st.get("epoch", 0))
    say(f"note: the cosine learning-rate schedule depends on the total number of epochs, so it is stretched: it "
        f"now decays to {new.learning_rate * new.lr_min_factor:.3g} at epoch {new.epochs} instead of {old.epochs}; "
        f"the learning rate at this point moves from {learning_rate_at(old, progress):.3g} to "
        f"{learning_rate_at(new, progress):.3g}, so the result differs from a run trained for {new.epochs} epochs "
        "from the start")
