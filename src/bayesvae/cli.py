"""The ``bayesvae`` command: each subcommand parses options and calls one library function.

Errors a user can cause exit with code 2 and a one-line message (``--debug`` shows the traceback); SIGTERM and
SIGINT during training commit a checkpoint and exit with 143 and 130.

``--device`` is resolved by :mod:`bayesvae.distributed` (a device the machine lacks is a one-line error, exit 2).
Under ``torchrun`` (several processes) ``train``, ``evaluate``, ``score`` and ``encode`` join the process group
from the environment; rank 0 prints and writes, every rank exits with the same code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

from . import data as bdata
from . import distributed as ranks
from . import flags
from .checkpoint import atomic_write_bytes, atomic_write_text
from .checkpoint import list_checkpoints as ckpt_list
from .config import TrainConfig
from .errors import BayesVAEError, ConfigError
from .text import cli as text_cli
from .training import Callback, TrainingInterrupted

EXIT_PARTIAL, EXIT_USAGE, EXIT_IO, EXIT_SIGTERM, EXIT_SIGINT, EXIT_PIPE = 1, 2, 1, 143, 130, 141
#: ``evaluate --precision bf16``: the mean log-likelihood differs from float32 by at most this (per example, on
#: average; measured in the "Scaling out" table of docs/scaling.md and held by tests/test_distributed.py on CPU).
BF16_EVAL_TOLERANCE_NATS = 0.1


# ------------------------------------------------------------------------------------------------------ output
def _loss_text(trainer, loss: float, recon: float, kl: float) -> str:
    """The seed's headline, the total loss, with its two terms (for IWAE the terms are the ELBO's, not a split)."""
    if trainer.config.objective == "iwae":
        return f"loss {loss:.3f} nats (-IWAE-{trainer.config.samples}; ELBO terms: recon {recon:.3f} + KL {kl:.3f})"
    return f"loss {loss:.3f} nats (recon {recon:.3f} + KL {kl:.3f})"


class Progress(Callback):  # rank 0 alone reports (the epoch means are the global ones)
    """A one-line progress bar on a terminal, redrawn every ``every`` seconds; elsewhere (a log file, CI) a line
    per epoch, and a line every ``every_line`` seconds within an epoch that takes longer (a text epoch can take
    minutes): loss in nats and its two terms."""

    def __init__(self, stream=None, every: float = 0.25, every_line: float = 60.0):
        self.stream, self.every, self.every_line = stream or sys.stderr, every, every_line
        self.last = time.monotonic()

    def on_step_end(self, trainer, metrics) -> None:
        now = time.monotonic()
        tty = self.stream.isatty()
        if not ranks.is_main() or now - self.last < (self.every if tty else self.every_line) or "loss" not in metrics:
            return
        self.last = now
        st = trainer.state
        text = _loss_text(trainer, metrics["loss"], metrics.get("reconstruction_nll", math.nan),
                          metrics.get("kl", math.nan))
        line = (f"epoch {st.epoch + 1}/{trainer.config.epochs} step {st.step_in_epoch}/{trainer.steps_per_epoch} "
                f"{text} {metrics['examples_per_second']:.0f} ex/s")
        self.stream.write("\r" + line + "   " if tty else line + "\n")
        self.stream.flush()

    def on_epoch_end(self, trainer, record) -> None:
        if not ranks.is_main():
            return
        valid = f" valid loss {record['valid_loss']:.3f}" if "valid_loss" in record else ""
        text = _loss_text(trainer, record.get("train_loss", math.nan), record.get("train_reconstruction_nll", math.nan),
                          record.get("train_kl", math.nan))
        self.last = time.monotonic()
        line = f"epoch {record['epoch']}/{trainer.config.epochs} {text}{valid} [{record['epoch_seconds']:.1f} s]\n"
        self.stream.write(("\r" if self.stream.isatty() else "") + line)
        self.stream.flush()


def _print(msg: str) -> None:
    """A status line on stderr, from rank 0 alone under torchrun."""
    if ranks.is_main():
        print(msg, file=sys.stderr, flush=True)


#: The subcommands that run under torchrun (each rank takes a share of the work).
DISTRIBUTED_COMMANDS = ("train", "evaluate", "score", "encode")


def _device(args) -> torch.device:
    """The device of ``--device`` (``auto`` says what it chose); under torchrun also joins the process group."""
    if ranks.world_size_from_env() > 1 and args.command not in DISTRIBUTED_COMMANDS:
        raise ConfigError(f"`bayesvae {args.command}` runs as one process; run it without torchrun "
                          f"(under torchrun: {', '.join(DISTRIBUTED_COMMANDS)})")
    notes: list[str] = []
    device = ranks.resolve_device(args.device, announce=notes.append)
    _DEVICE_NOTE[:] = notes  # said once the command's checks passed (an error stays the only line on failure)
    ranks.init_from_env(device)
    return device


_DEVICE_NOTE: list[str] = []


def _say_device() -> None:
    """The device ``--device auto`` chose (printed once, by rank 0)."""
    for note in _DEVICE_NOTE:
        _print(note)
    _DEVICE_NOTE.clear()


def _warn(msg: str) -> None:
    _print(f"\nwarning: {msg}")


def _write_table(path: Path, columns: dict, overwrite: bool) -> None:
    """Named 1-D columns to ``.csv`` (integer columns stay integers) or, stacked as floats, to ``.npy``; atomic."""
    import io

    import numpy as np

    arrays = [np.asarray(c) for c in columns.values()]
    if path.suffix == ".npy":
        buf = io.BytesIO()
        matrix = arrays[0] if len(arrays) == 1 else np.stack(arrays, 1)
        np.save(buf, matrix.astype(np.float32), allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)
        return
    fmt = [(lambda v: str(int(v))) if a.dtype.kind in "iub" else (lambda v: repr(float(v))) for a in arrays]
    rows = [",".join(columns)] + [",".join(f(a[i]) for f, a in zip(fmt, arrays, strict=True))
                                  for i in range(len(arrays[0]))]
    atomic_write_text(path, "\n".join(rows) + "\n", overwrite=overwrite)


def _matrix_columns(matrix, names=None, prefix: str = "x") -> dict:
    names = list(names) if names else [f"{prefix}{i}" for i in range(matrix.shape[1])]
    return {n: matrix[:, i] for i, n in enumerate(names)}


def _check_out(path: Path, overwrite: bool, suffixes: tuple[str, ...]) -> None:
    """Fail before any work when the output would be refused later."""
    if path.suffix not in suffixes:
        raise bdata.DataValidationError(f"--out {path}: use one of {', '.join(suffixes)}")
    if path.exists() and not overwrite:
        from .errors import OutputExistsError
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise bdata.DataValidationError(f"--out {path}: directory {path.parent} does not exist")


# ------------------------------------------------------------------------------------------------- subcommands
def _load_run(args, **kw):
    """The run of a subcommand, pointed at moved data by --data/--data-dir where the subcommand has them."""
    from . import runs

    return runs.load_run(args.run_dir, args.checkpoint, data_dir=getattr(args, "data_dir", None),
                         data=getattr(args, "run_data", None), say=_print, **kw)


#: CLI flag of each TrainConfig field, so that a refused value is named as the user typed it.
_FLAG_OF_FIELD = {"epochs": "--epochs", "batch_size": "--batch-size", "learning_rate": "--lr",
                  "lr_schedule": "--lr-schedule", "lr_decay": "--lr-decay", "objective": "--objective",
                  "samples": "--samples", "kl_warmup_epochs": "--kl-warmup", "early_stopping_patience": "--patience",
                  "seed": "--seed", "checkpoint_every_steps": "--checkpoint-every",
                  "nonfinite_policy": "--on-nonfinite",
                  "max_seconds": "--max-minutes", "precision": "--precision", "free_bits": "--free-bits",
                  "data_order": "--data-order"}


def _check_max_minutes(value) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"--max-minutes must be a non-negative number of minutes (0: no limit), got {value:g}")


def _train_config(args) -> TrainConfig:
    _check_max_minutes(args.max_minutes)
    if args.lr_schedule == "exponential" and args.lr_decay is None:
        raise ConfigError("--lr-schedule exponential needs --lr-decay, the factor applied to the learning rate "
                          "after each epoch (e.g. --lr-decay 0.95)")
    if args.lr_decay is not None and args.lr_schedule != "exponential":
        raise ConfigError(f"--lr-decay applies to --lr-schedule exponential; the schedule here is {args.lr_schedule}")
    if args.lr_decay is not None and not 0 < args.lr_decay <= 1:
        raise ConfigError(f"--lr-decay must be in (0, 1] (the factor per epoch), got {args.lr_decay:g}")
    try:
        return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                           lr_schedule=args.lr_schedule, lr_decay=1.0 if args.lr_decay is None else args.lr_decay,
                           objective=args.objective, samples=args.samples, kl_warmup_epochs=args.kl_warmup,
                           early_stopping_patience=args.patience, seed=args.seed,
                           checkpoint_every_steps=args.checkpoint_every, nonfinite_policy=args.on_nonfinite,
                           max_seconds=60.0 * args.max_minutes, precision=args.precision,
                           free_bits=args.free_bits, data_order=args.data_order)
    except ConfigError as err:
        raise ConfigError(_flag_names(str(err))) from None


def _flag_names(message: str) -> str:
    for field_name, flag in _FLAG_OF_FIELD.items():
        message = message.replace(f"option {field_name!r}", flag)
    return message


def _posterior_choice(args) -> tuple[str, dict]:
    """--posterior, --kappa and --posterior-bn as (name, options); a flag that does not apply is refused."""
    options: dict = {}
    if args.posterior == "vmf":
        if args.kappa is None:
            raise ConfigError("--posterior vmf needs its fixed concentration: --kappa K (e.g. --kappa 50)")
        if args.posterior_bn is not None:
            raise ConfigError("--posterior-bn applies to the Gaussian posterior; the vmf posterior's KL is a "
                              "constant and cannot vanish anyway")
        options["kappa"] = args.kappa
    elif args.kappa is not None:
        raise ConfigError("--kappa is the concentration of the vmf posterior; add --posterior vmf or drop --kappa")
    if args.posterior_bn is not None:
        key, sep, value = args.posterior_bn.partition("=")
        if not sep or key not in ("gamma", "tau"):
            raise ConfigError(f"--posterior-bn takes gamma=G (BN on μ, fixed scale) or tau=T (BN on μ and σ), "
                              f"got {args.posterior_bn!r}")
        try:
            options[f"bn_{key}"] = float(value)
        except ValueError:
            raise ConfigError(f"--posterior-bn {key}= needs a number, got {value!r}") from None
    return args.posterior, options


def _install_signal_handlers(trainer) -> None:
    def handler(signum, frame):
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_requested = int(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _on_ready(trainer, dataset, likelihood) -> None:
    from .model import num_parameters

    info = dataset.describe()
    _say_device()
    _print(f"data: {info['name']} ({info['kind']}, shape {info['event_shape']}, "
           f"train/valid/test {info['splits']['train']}/{info['splits']['valid']}/{info['splits']['test']})")
    if info.get("layout"):
        _print(f"data: {info['layout']}")
    if info.get("constant_columns"):
        _print(f"warning: constant columns {info['constant_columns']} carry no information")
    from .text.runs import ready_lines
    for line in ready_lines(info, trainer):
        _print(line)
    how = trainer.run_state["data"]["preparation"]
    note = {"binarize": " (dynamic binarisation: a fresh draw each minibatch; valid/test binarised once, fixed seed)",
            "dequantize": " (uniform dequantisation of the pixel levels)"}.get(how, "")
    options = trainer.run_state.get("model_config", {}).get("likelihood_options") or {}
    if likelihood == "gaussian-fixed":
        import inspect

        from .likelihoods import GaussianFixedVariance
        default = inspect.signature(GaussianFixedVariance.__init__).parameters["sigma"].default
        note = (f" with σ = {options['sigma']:g}" if "sigma" in options else
                f" with σ = {default:g} (the default; set it with --sigma)") + note
    _print(f"likelihood: {likelihood}{note}; latent dim {trainer.model.latent_dim}; "
           f"{num_parameters(trainer.model):,} parameters")
    sizes = trainer.run_state.get("table_sizes")
    if sizes and sizes["chosen"]:
        from . import sizing
        text = sizing.as_flags(sizes["chosen"])
        stopping = "; early stopping on the validation split" if sizes["chosen"].get("patience") else ""
        _print(f"table sizes (from {sizes['n_rows']} training rows x {sizes['n_columns']} columns; "
               f"{sizing.__name__}.table_defaults, docs/tabular-defaults.md): {text}{stopping}")
    if info["kind"] == "binary" and likelihood.startswith("gaussian"):
        _print("note: a Gaussian density on 0/1 data is fitted to them dequantised over 2 levels (else it would grow "
               "without bound as σ shrinks); its bits/dim are those of the 0/1 values. --likelihood bernoulli is "
               "the natural likelihood for 0/1 data")
    bound = trainer.run_state.get("kl_bound")
    if bound:
        if bound["kind"] == "constant":
            _print(f"posterior: {bound['form']}; KL(p(z|x) || uniform) = {bound['nats']:.4f} nats for every x "
                   "(a constant: it cannot vanish)")
        else:
            _print(f"posterior: {bound['form']}; the mean KL of every training batch is at least "
                   f"{bound['nats']:.4f} nats ({bound['nats_per_dim']:.4f} per dimension), so it cannot vanish in "
                   "training; on other data (validation, test) the KL may be lower: evaluate shows it beside this "
                   "floor")
    if trainer.config.free_bits > 0:
        _print(f"free bits: {trainer.config.free_bits:g} nats per dimension in the training objective; the loss "
               "shown is still the true negative ELBO")
    if ranks.world_size() > 1:
        _print(f"processes: {ranks.world_size()} ({'NCCL' if trainer.device.type == 'cuda' else 'gloo'}); global "
               f"batch {trainer.config.batch_size} = {ranks.world_size()} x "
               f"{trainer.config.batch_size // ranks.world_size()}")
    if trainer.world_size_changed:
        _print(f"note: this run was written by a different number of processes; continuing from step "
               f"{trainer.state.global_step} with {ranks.world_size()}: the data order and the random draws are those "
               "of the uninterrupted run (every step's draws come from (seed, step)), so it matches it up to the order "
               "of float sums, not bit for bit (a vmf posterior's draws stay per process)")
    order = trainer.run_state.get("data_order")
    if order and order.get("order") != "length-bucketed":
        _print(f"data order: {order['describe']}")
    choice = trainer.run_state.get("precision_choice")
    if choice:
        _print(f"precision auto: {choice['chosen']} ({choice['reason']})")
    if trainer.run_dir is not None:
        _print(f"run directory: {trainer.run_dir}")
    _install_signal_handlers(trainer)


#: train flags that ``--resume`` applies (declared in :mod:`bayesvae.flags`); any other is refused with ``--resume``.
RESUME_FLAGS = tuple(d for d in flags.RESUME_OPTIONS if d not in ("debug", "resume"))


def _refuse(args, **context) -> None:
    """Refuse (exit 2) an option the user typed where :mod:`bayesvae.flags` says it has no effect."""
    flags.refuse_inapplicable(args.leaf, args.explicit, context, args.flag_of)


def _refuse_for_run(args, run, **context) -> None:
    """The same, once the run is loaded: its data kind is known."""
    _refuse(args, data=bdata.source_kind(run.spec.source), **context)


def _train_context(args) -> dict:
    if args.resume:  # the run's stored data decide what --data/--data-dir may point at
        kind = bdata.source_kind(_stored_source(args.resume, None) or "")
        kind = kind or ("npy" if _stored_source(args.resume, None) else None)  # a moved file: still a file
        return {"mode": "resume", "data": kind, "resumed": kind}
    return {"mode": "new", "data": bdata.source_kind(args.data), "posterior": args.posterior,
            "likelihood": args.likelihood or "default", "lr_schedule": args.lr_schedule}


def _likelihood_options(args) -> dict:
    if args.likelihood_options:
        try:
            options = json.loads(args.likelihood_options)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--likelihood-options is not valid JSON ({err.msg} at character {err.pos}): give an "
                              "object like '{\"sigma\": 0.1}'") from None
    else:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"--likelihood-options must be a JSON object like '{{\"sigma\": 0.1}}', "
                          f"got {args.likelihood_options!r}")
    if args.sigma is not None:
        if args.likelihood != "gaussian-fixed":
            what = (f"--likelihood {args.likelihood}" if args.likelihood else
                    "the default likelihood (chosen from the data: bernoulli for binary or grey-level images)")
            raise ConfigError(f"--sigma is the σ of --likelihood gaussian-fixed; it has no effect with {what}: "
                              "add --likelihood gaussian-fixed, or drop --sigma")
        if "sigma" in options and options["sigma"] != args.sigma:
            raise ConfigError(f"--sigma {args.sigma:g} and --likelihood-options sigma {options['sigma']!r} set the "
                              "same σ to two values; give it once")
        options["sigma"] = args.sigma
    try:
        from .runs import check_likelihood_options
        check_likelihood_options(args.likelihood, options) if args.likelihood else None
    except ConfigError as err:
        raise ConfigError(f"--likelihood-options: {err}") from None
    return options


def _resume(args, callbacks, device):
    from . import runs

    given = args.explicit
    if "max_minutes" in given:
        _check_max_minutes(args.max_minutes)
    pick = {d: getattr(args, d) if d in given else None for d in RESUME_FLAGS}
    return runs.resume(args.resume, epochs=pick["epochs"], max_minutes=pick["max_minutes"], patience=pick["patience"],
                       checkpoint_every=pick["checkpoint_every"], precision=pick["precision"], data=pick["data"],
                       data_dir=pick["data_dir"], callbacks=callbacks, on_ready=_on_ready, say=_print, device=device,
                       on_warning=_warn)


def _table_sizes(args) -> set[str]:
    """The settings of a table's rule (bayesvae.sizing.SETTINGS, each named as its option's dest) that the user
    left unset (a preset sets them all), which the rule then chooses."""
    from .sizing import SETTINGS
    return set() if args.preset else set(SETTINGS) - set(args.explicit)


def cmd_train(args) -> int:
    _refuse(args, **_train_context(args))
    try:
        return _train(args)
    except BayesVAEError as err:
        if not args.preset:
            raise
        raise type(err)(f"{err} (with the settings of --preset {args.preset}; explicit flags override them)") from None


def _train(args) -> int:
    from . import runs

    callbacks = [Progress()]
    device = _device(args)
    if args.deterministic:
        ranks.set_deterministic(device)
    try:
        if args.resume:
            if not Path(args.resume).is_dir():
                from .errors import CheckpointNotFoundError
                raise CheckpointNotFoundError(f"--resume {args.resume}: no run directory there; give the --out of "
                                              "a run started with `bayesvae train`")
            trainer = _resume(args, callbacks, device)
        else:
            posterior, posterior_options = _posterior_choice(args)
            spec = runs.DataSpec(args.data, args.data_dir, args.split_seed, args.valid_fraction, args.test_fraction,
                                 args.limit, args.label_column, args.vocab_size, args.max_length,
                                 args.long_sentences or "refuse", bdata.parse_image_shape(args.image_shape))
            config = _train_config(args)
            options = {**_likelihood_options(args), **text_cli.likelihood_options(args)}
            kwargs = dict(train_config=config, likelihood=args.likelihood, likelihood_options=options,
                          latent_dim=args.latent_dim, architecture=args.architecture, hidden=args.hidden,
                          activation=args.activation, overwrite=args.overwrite, callbacks=callbacks,
                          tensorboard=args.tensorboard, on_ready=_on_ready, posterior=posterior,
                          posterior_options=posterior_options, on_warning=_warn, device=device,
                          table_sizes=_table_sizes(args))
            if args.select:
                from .selection import select_and_train
                trainer = select_and_train(spec, out=args.out, say=_print, **kwargs)
            else:
                trainer = runs.train(spec, out=args.out, **kwargs)
    except (KeyboardInterrupt, Terminated):
        out = Path(args.resume or args.out)
        if not args.resume and (out / "run.json").is_file() and not ckpt_list(out):
            _print(f"stopped before the first step was committed: {out} holds no checkpoint, so there is nothing to "
                   f"resume; start again with `bayesvae train ... --out {out} --overwrite`")
        raise
    except TrainingInterrupted as stop:
        signum = stop.signum
        code = EXIT_SIGTERM if signum == signal.SIGTERM or (signum is None and ranks.world_size() > 1) else EXIT_SIGINT
        if ranks.world_size() > 1:  # every rank says it stopped, with its exit code
            ranks.log(f"stopped with the checkpoint {stop.checkpoint_path}; exit {code}")
        _print(f"stopped: checkpoint committed at {stop.checkpoint_path}; continue with "
               f"`bayesvae train --resume {args.resume or args.out}`")
        return code
    finally:
        _exit_on_signals()  # after training, Ctrl-C and SIGTERM end the command at once (e.g. during the report)
    if trainer.run_dir is not None and args.report_samples > 0 and ranks.is_main():
        from .report import write_report
        from .rundir import RunLock

        try:
            with RunLock(trainer.run_dir, "train (report)"):
                moved = {k: getattr(args, k) for k in ("data", "data_dir") if args.resume and k in args.explicit}
                path = write_report(trainer.run_dir, num_samples=args.report_samples, device=device,
                                    max_seconds=REPORT_AFTER_TRAINING_S, say=_print, **moved)
            _print(_report_line(path, f"`bayesvae report {trainer.run_dir}`", prefix="report: "))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # the trained model is safe; a report failure must not fail the run
            _print(f"warning: could not write the report ({err}); try `bayesvae report {trainer.run_dir}`")
    st = trainer.state
    best = (f"; best validation loss {st.best_valid_loss:.3f} nats"
            if st.history and "valid_loss" in st.history[-1] else "")
    why = ""
    if st.stopped_early:  # say which rule ended the run before --epochs
        why = (f" (time budget of {trainer.config.max_seconds / 60:.3g} min used)" if trainer.budget_spent
               else " (stopped early: no validation improvement for --patience epochs)")
    _print(f"done: {st.epoch} epochs, {st.global_step} steps{best}{why}; run directory {trainer.run_dir}")
    return 0


def _split_data(run, split: str):
    dataset = run.dataset()
    prepared = run.prepared(dataset)
    x = prepared.scored(split)
    if x.shape[0] == 0:
        raise bdata.DataValidationError(f"the {split} split of {run.spec.source!r} is empty; choose another --split")
    labels = getattr(dataset, f"{split}_labels")
    return x, labels, prepared


#: The report that ``train`` writes evaluates as many test examples as fit in this many seconds (the page says
#: how many; ``bayesvae report`` evaluates more).
REPORT_AFTER_TRAINING_S = 300.0


def _announce_duration(model, x: torch.Tensor, samples: int, device: torch.device, pilot: int = 4) -> None:
    """When the importance sampling of the whole split would take over ``report.ANNOUNCE_AFTER_S``, say how long
    (timed on the first ``pilot`` examples; the figures do not change) and how to make it shorter."""
    from . import report
    from .estimators import seconds_per_example

    n = int(x.shape[0])
    if n <= pilot:
        return
    per_example = seconds_per_example(model, x, samples, pilot)
    total = per_example * n / max(1, ranks.world_size())
    if total > report.ANNOUNCE_AFTER_S:
        _print(f"evaluating {n} examples with K = {samples} importance samples: about {report.duration_text(total)} "
               f"here ({1000 * per_example:.0f} ms per example, timed on the first {pilot}); --samples K and --limit N "
               "make it shorter")


def cmd_evaluate(args) -> int:
    from .estimators import evaluate

    if args.limit is not None and args.limit <= 0:
        raise bdata.DataValidationError(f"--limit must be a positive integer, got {args.limit}")
    device = _device(args)
    run = _load_run(args, device=device)
    _refuse_for_run(args, run)
    x, _, prepared = _split_data(run, args.split)
    if args.limit is not None:
        x = x[: args.limit]
    torch.manual_seed(args.seed)
    import contextlib

    low = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    with low:
        _announce_duration(run.model, x, args.samples, device)
    t0 = time.perf_counter()
    with low:  # bf16: the networks only; densities, KL and the log-sum-exp stay float32/float64
        result = evaluate(run.model, x, args.samples, levels=prepared.levels, batch_size=args.batch_size,
                          distributed=True)
    if result is None:  # another rank than 0: its share is in rank 0's result
        return 0
    _say_device()
    result.update(processes=ranks.world_size(), device=str(device), precision=args.precision)
    if args.precision == "bf16":
        result["bf16_error_bound_nats"] = BF16_EVAL_TOLERANCE_NATS
    if text_cli.is_text_run(run):
        from .text.metrics import text_figures
        result.update(text_figures(run.model, x, result))
    result.update(split=args.split, checkpoint=str(run.checkpoint), seconds=round(time.perf_counter() - t0, 2),
                  likelihood=run.model_config.likelihood, preparation=prepared.preparation)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.split}: {result['num_examples']} examples, K = {result['num_samples']} importance samples"
              + (f" (networks in bf16: within {BF16_EVAL_TOLERANCE_NATS} nats of float32)"
                 if args.precision == "bf16" else ""))
        per = ("per sentence" if "perplexity_per_token" in result else f"{result['nll_bits_per_dim']:.4f} bits/dim")
        print(f"  log-likelihood  {result['log_likelihood_nats']:.3f} nats   (NLL {result['nll_nats']:.3f} "
              f"± {result['nll_nats_stderr']:.3f} nats, {per})")
        print(f"  ELBO            {result['elbo_nats']:.3f} nats   (reconstruction NLL "
              f"{result['reconstruction_nll_nats']:.3f} + KL {result['kl_nats']:.3f})")
        bound = run.state.get("kl_bound")
        if bound and bound["kind"] != "constant":
            print(f"  KL floor        {bound['nats']:.3f} nats on the mean of each training batch (batch statistics);"
                  f" the {args.split} KL above is {result['kl_nats']:.3f} nats, under the running statistics")
        print(f"  active units    {result['active_units']} of {result['latent_dim']}")
        print(f"  I(x; z)         {result['mutual_information_nats']:.3f} nats   (minibatch estimate, N = "
              f"{result['mutual_information_batch_size']}: at most log N = {result['mutual_information_max_nats']:.2f}"
              "; biased low near that ceiling)")
        if result["kl_per_dimension_nats"] is not None:
            print("  KL per dim      " + " ".join(f"{v:.2f}" for v in result["kl_per_dimension_nats"]))
        else:
            print("  KL per dim      (the KL does not split by dimension: vMF's KL is one constant)")
        if "perplexity_per_token" in result:
            print(f"  perplexity      {result['perplexity_per_token']:.2f} per token (IS; {result['tokens']} tokens: "
                  f"{result['perplexity_tokens']}; ELBO bound {result['elbo_perplexity_bound_per_token']:.2f})")
            print(f"  reconstruction  {100 * result['reconstruction_token_accuracy']:.1f}% of tokens (greedy from "
                  "the posterior's mode)")
        if "nll_standardized_nats" in result:
            print(f"  (densities of the data in the file's units; on the standardised features the NLL is "
                  f"{result['nll_standardized_nats']:.3f} nats, lower by Σ ln s = "
                  f"{result['standardization_log_scale_sum_nats']:.3f})")
    return 0


def cmd_sample(args) -> int:
    from .grids import save_grid_png

    out = Path(args.out)
    if args.n <= 0:
        raise bdata.DataValidationError(f"-n must be a positive integer, got {args.n}")
    run = _load_run(args, device=_device(args))
    _refuse_for_run(args, run)
    text_cli.check_text_output(run, out, {"--temperature": args.temperature})
    if text_cli.is_text_run(run):  # sentences: greedy, or drawn word by word at --temperature with --draw
        if args.temperature is not None and not args.draw:
            raise ConfigError("--temperature applies to --draw (sampling word by word); without --draw the "
                              "sentences are greedy")
        torch.manual_seed(args.seed)
        lines = text_cli.sample_sentences(run, args.n, (args.temperature or 1.0) if args.draw else None)
        text_cli.write_sentences(out, lines, args.overwrite)
        _print(f"wrote {args.n} {'sampled' if args.draw else 'greedy'} sentences from z ~ q(z) to {out}")
        return 0
    _check_out(out, args.overwrite, (".png", ".npy", ".csv"))
    torch.manual_seed(args.seed)
    x = run.model.sample(args.n, mean=not args.draw).cpu()
    _save_examples(out, x, run, args.overwrite, save_grid_png)
    _say_device()
    _print(f"wrote {args.n} samples to {out}")
    return 0


def _scale(images) -> int:
    """Enlarge small images in PNG grids (8x8 digits become 32x32 tiles)."""
    return max(1, min(4, 32 // images.shape[-1]))


def _save_examples(out: Path, x, run, overwrite: bool, save_grid_png, index=None) -> None:
    if out.suffix == ".png":
        if len(run.model_config.data_shape) != 3:
            raise bdata.DataValidationError("PNG output needs image data; use .npy or .csv")
        save_grid_png(out, x, overwrite=overwrite, scale=_scale(x))
    elif out.suffix == ".npy" and len(run.model_config.data_shape) == 3:  # images in their own layout [N, C, H, W]:
        import io  # the file `score --data` and `train --data` take

        import numpy as np

        buf = io.BytesIO()
        np.save(buf, x.numpy().astype(np.float32), allow_pickle=False)
        atomic_write_bytes(out, buf.getvalue(), overwrite=overwrite)
    else:
        std = run.state["data"].get("standardization")
        flat = x.reshape(x.shape[0], -1)
        if std is not None:  # back to the user's units
            flat = flat * torch.tensor(std[1]) + torch.tensor(std[0])
        names = run.state["data"]["description"].get("feature_names")
        columns = _matrix_columns(flat.numpy(), names)
        if index is not None and out.suffix == ".csv":  # each row's 0-based row in its source file, as in `score`
            columns = {"index": index, **columns}
        _write_table(out, columns, overwrite)


def cmd_reconstruct(args) -> int:
    from .grids import save_grid_png

    out = Path(args.out)
    if args.n <= 0:
        raise bdata.DataValidationError(f"-n must be a positive integer, got {args.n}")
    run = _load_run(args, device=_device(args))
    _refuse_for_run(args, run)
    from .estimators import _on, model_device

    x, _, _ = _split_data(run, args.split)
    text_cli.check_text_output(run, out, {})
    if text_cli.is_text_run(run):  # input<TAB>greedy reconstruction, one sentence a line
        text_cli.write_sentences(out, text_cli.reconstruction_lines(run, x[: args.n]), args.overwrite)
        _print(f"wrote {min(args.n, x.shape[0])} greedy reconstructions (beside their inputs) to {out}")
        return 0
    _check_out(out, args.overwrite, (".png", ".npy", ".csv"))
    x = _on(x[: args.n], torch.device("cpu"))
    recon = run.model.reconstruct(_on(x, model_device(run.model))).cpu()
    if out.suffix == ".png" and len(run.model_config.data_shape) == 3:
        pairs = torch.stack([x, recon], 1).reshape(-1, *x.shape[1:])  # input, reconstruction, input, ...
        save_grid_png(out, pairs, ncol=2 * min(8, x.shape[0]) if x.shape[0] > 1 else 2, overwrite=args.overwrite,
                      scale=_scale(x))
    else:
        _save_examples(out, recon, run, args.overwrite, save_grid_png,
                       index=run.dataset().rows(args.split)[: x.shape[0]])
    _say_device()
    _print(f"wrote {x.shape[0]} reconstructions{' (inputs beside them)' if out.suffix == '.png' else ''} to {out}")
    return 0


def cmd_encode(args) -> int:
    out = Path(args.out)
    _check_out(out, args.overwrite, (".npy", ".csv"))
    run = _load_run(args, device=_device(args))
    _refuse_for_run(args, run)
    from .estimators import _batches, model_device

    x, labels, _ = _split_data(run, args.split)
    mine = ranks.shard(x.shape[0])  # under torchrun each rank encodes its share; rank 0 writes them all
    parts = [run.model.encode(xb).cpu() for xb in _batches(x[mine.start: mine.stop], 1000, model_device(run.model))]
    z = ranks.gather_rows(torch.cat(parts) if parts else torch.zeros(0, run.model.latent_dim), x.shape[0])
    if not ranks.is_main():
        return 0
    columns = _matrix_columns(z.numpy(), prefix="z")
    if out.suffix == ".csv":  # index: the example's 0-based row in its source file, as in `score`
        columns = {"index": run.dataset().rows(args.split), **columns}
        if labels is not None:
            columns["label"] = labels.numpy()
    _write_table(out, columns, args.overwrite)
    _say_device()
    _print(f"wrote posterior means E[z|x] of {z.shape[0]} {args.split} examples to {out}")
    return 0


def cmd_score(args) -> int:
    """Per-example NLL = -log p(x) in nats: high values flag examples the model finds unlikely."""
    from . import runs
    from .estimators import estimate_log_likelihood

    out = Path(args.out)
    _check_out(out, args.overwrite, (".csv", ".npy"))
    _refuse(args, source="data" if args.data else "split", data=bdata.source_kind(args.data) if args.data else None)
    if args.data:  # new data to score: --data-dir, if given, is where those (MNIST) files are
        if args.data_dir is not None and args.data != "mnist":
            raise ConfigError("--data-dir is the directory of the MNIST files; "
                              f"it has no effect with --data {args.data}")
        run = runs.load_run(args.run_dir, args.checkpoint, device=_device(args), say=_print)
        x, rows = run.new_data(args.data, data_dir=args.data_dir)
    else:
        run = _load_run(args, device=_device(args))
        _refuse_for_run(args, run, source="split")
        dataset = run.dataset()
        x = run.prepared(dataset).scored(args.split)
        rows = dataset.rows(args.split)
    ll = estimate_log_likelihood(run.model, x, args.samples, seed=args.seed, distributed=True)
    if not ranks.is_main():
        return 0
    # index: the example's 0-based row in its source file (MNIST test: the row of the t10k file)
    columns = {"index": rows, "nll_nats": (-ll).numpy()}
    _write_table(out, columns if out.suffix == ".csv" else {"nll_nats": columns["nll_nats"]}, args.overwrite)
    _say_device()
    _print(f"wrote -log p(x) (nats, K = {args.samples}) of {x.shape[0]} "
           f"{args.data or args.split} examples to {out}")
    return 0


def cmd_export(args) -> int:
    from . import runs

    path = runs.export_model(args.run_dir, args.out, args.checkpoint, overwrite=args.overwrite)
    _print(f"exported the model of {args.run_dir} ({args.checkpoint}) to {path}; "
           f"check it with `bayesvae evaluate {args.out}`")
    return 0


def cmd_data_fetch(args) -> int:
    if args.name != "mnist":
        raise bdata.DataValidationError(f"only 'mnist' can be fetched, got {args.name!r}")
    path = bdata.fetch_mnist(args.cache_dir)
    _print(f"MNIST is in {path} (checksums verified); train with `bayesvae train --data mnist --data-dir {path}`")
    return 0


def cmd_data_info(args) -> int:
    _refuse(args, data=bdata.source_kind(args.source))
    info = bdata.dataset_info(args.source, data_dir=args.data_dir, image_shape=args.image_shape)
    print(json.dumps(info, indent=2))
    return 0


def cmd_data_convert(args) -> int:
    from .convert import convert

    result = convert(args.source, args.out, label_column=args.label_column, overwrite=args.overwrite, say=_print)
    _print(f"wrote {result['out']}: shape {tuple(result['shape'])}, {result['dtype']}, {result['bytes']:,} bytes; "
           f"SHA-256 {result['sha256']}" + (f"; labels in {result['labels']}" if result["labels"] else ""))
    return 0


# ---- pictures and report (plots.py, report.py) ------------------------------------------------------------------
def cmd_plot(args) -> int:
    from . import plots

    run_dir = Path(args.run_dir)
    sentences = args.kind == "interpolation" and _stored_architecture(args.run_dir) == "rnn"
    out = Path(args.out) if args.out else run_dir / "plots" / f"{args.kind}.{'txt' if sentences else 'png'}"
    if args.out is None and run_dir.is_dir():
        out.parent.mkdir(exist_ok=True)
    output = "sentences" if sentences else "png"
    _refuse(args, kind=args.kind, output=output)  # an option that does not apply is named first
    _check_out(out, args.overwrite, (".txt", ".tsv") if sentences else (".png",))
    run = _load_run(args, device=_device(args))
    _refuse_for_run(args, run, kind=args.kind, output=output)
    if sentences:  # a text run's interpolation is sentences, not a picture
        from .text.cli import interpolation_pairs, write_sentences

        x = plots.context(run, split=args.split).x
        write_sentences(out, interpolation_pairs(run, x, seed=args.seed), args.overwrite)
        _print(f"wrote greedy sentences along the latent path between pairs of {args.split} sentences to {out}")
        return 0
    options = {"split": args.split, "seed": args.seed}
    if args.dims is not None:
        if args.kind not in ("latent", "manifold"):
            raise bdata.DataValidationError(f"--dims applies to the latent and manifold kinds, not {args.kind!r}")
        options["dims"] = tuple(args.dims)
    fig = plots.plot(plots.context(run, split=args.split), args.kind, **options)
    atomic_write_bytes(out, plots.to_png(fig, dpi=args.dpi), overwrite=args.overwrite)
    _say_device()
    _print(f"wrote the {args.kind} plot to {out}")
    return 0


def cmd_report(args) -> int:
    from .report import report_failures, write_report

    if args.samples <= 0:
        raise bdata.DataValidationError(f"--samples must be a positive integer, got {args.samples}")
    if args.max_examples <= 0:
        raise bdata.DataValidationError(f"--max-examples must be a positive integer, got {args.max_examples}")
    from .rundir import RunLock

    if not Path(args.run_dir).is_dir():
        from .errors import CheckpointNotFoundError
        raise CheckpointNotFoundError(f"no run directory at {args.run_dir}")
    source = _stored_source(args.run_dir, args.run_data)  # None without a readable run.json
    _refuse(args, data=bdata.source_kind(source) if source is not None else None)
    with RunLock(args.run_dir, "report"):
        path = write_report(args.run_dir, num_samples=args.samples, max_examples=args.max_examples,
                            checkpoint=args.checkpoint, seed=args.seed, device=_device(args), data=args.run_data,
                            data_dir=args.data_dir, say=_print)
    _say_device()
    _print(_report_line(path, f"`bayesvae report {args.run_dir}`", prefix="wrote "))
    return EXIT_PARTIAL if report_failures(path) else 0


def _stored_architecture(run_dir: str) -> str | None:
    """The network family a run was built with (from run.json; None where there is none to read)."""
    try:
        return str(json.loads((Path(run_dir) / "run.json").read_text())["model_config"]["architecture"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stored_source(run_dir: str, moved: str | None) -> str | None:
    """The data source a run was trained on (from run.json), or where --data says it is now."""
    try:
        source = json.loads((Path(run_dir) / "run.json").read_text())["data"]["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return moved if moved is not None and source not in ("digits", "mnist") else source


def _report_line(path: Path, hint: str, prefix: str) -> str:
    """What was written, and how many sections failed (a failed report never silently replaces a better one)."""
    from .report import REPORT_NAME, report_failures

    failed = report_failures(path) or []
    if not failed:
        return f"{prefix}{path} (self-contained; open it in a browser)"
    text = f"{prefix}{path} with {len(failed)} failed section(s): {', '.join(failed)}"
    if path.name != REPORT_NAME:
        kept = report_failures(path.with_name(REPORT_NAME)) or []
        text += (f"; the existing {REPORT_NAME} ({len(kept)} failed section(s)) was kept, not replaced by "
                 "this worse one")
    return text + f"; see the page for each error, fix the cause and rerun {hint}"


def _add_picture_commands(sub) -> None:
    from .plots import KINDS

    p = sub.add_parser("plot", help="draw one picture of a run as a PNG (latent, manifold, samples, ...)",
                       description="Draw one picture of a trained run. Kinds: latent (test posterior means by "
                       "label; PCA beyond 2-D), manifold (decoded lattice of normal quantiles), samples, "
                       "reconstructions, interpolation, traversals, kl (per-dimension KL and active units), curves "
                       "(learning curves), histograms (tabular data: data vs model per feature), "
                       "sphere (vmf latents: the latent circle or the two angles of S^2 with decoded images along "
                       "them; manifold, traversals "
                       "and kl are not drawn on a sphere).")
    _run_dir_args(p)
    p.add_argument("kind", choices=list(KINDS), metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    p.add_argument("--out", help="output .png (default: RUN_DIR/plots/KIND.png); a text run's interpolation writes "
                   "sentences (.txt or .tsv; default RUN_DIR/plots/interpolation.txt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--dims", type=int, nargs=2, metavar=("I", "J"),
                   help="latent dimensions to show (latent, manifold; default: the two with the largest KL)")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test",
                   help="the split a picture draws its examples from (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of a picture's random draws (default: %(default)s)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default: %(default)s)")
    _device_arg(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="write RUN_DIR/report.html: metrics, every plot, a latent explorer",
                       description="Write a self-contained report.html (no network needed to view it) into the "
                       "run directory: configuration, test log-likelihood with K importance samples, NLL in nats "
                       "and bits/dim, ELBO, active units, every applicable plot and an interactive latent explorer.")
    _run_dir_args(p)
    p.add_argument("--samples", type=int, default=1000, help="K importance samples (default: %(default)s)")
    p.add_argument("--max-examples", type=int, default=2000,
                   help="evaluate at most this many test examples (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the importance samples and pictures "
                   "(default: %(default)s)")
    _device_arg(p)
    p.set_defaults(func=cmd_report)


# ---------------------------------------------------------------------------------------------------- parser
def _device_arg(p) -> None:
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help=f"{ranks.DEVICE_CHOICES} (default: auto: CUDA, then MPS, then CPU; the choice is printed)")


def _run_dir_args(p, checkpoint_default: str = "best", *, reads_data: bool = True, run_data: bool = True) -> None:
    p.add_argument("run_dir", help="a run directory written by `bayesvae train`")
    p.add_argument("--checkpoint", default=checkpoint_default,
                   help="best, last, or a step directory (default: %(default)s)")
    if not reads_data:  # sample and export never read data: a --data-dir there would be ignored, so it is refused
        return
    p.add_argument("--data-dir", help="where the run's MNIST files are now (default: where they were in training); "
                   "checked against the run's data fingerprint")
    if run_data:
        p.add_argument("--data", dest="run_data", metavar="PATH", help="where the run's data file or folder is now "
                       "(default: where it was in training); checked against the run's data fingerprint")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line refusal (exit 2): the reason and where to look, not the whole usage block."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _seed(text: str) -> int:
    """A seed: an integer in [0, 2**63) (argparse names the flag in its refusal, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, got {text!r}") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer below 2**63, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bayesvae", description="Variational autoencoders, exactly as derived.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a VAE on a data source (or --resume a run)")
    p.add_argument("--data", default="digits", help="digits (default, embedded), mnist, or a .npy/.npz/.csv file or "
                   "image folder (with --resume: where the run's data file is now)")
    p.add_argument("--data-dir", help="directory holding the MNIST IDX files (mnist only)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint; only "
                   "--epochs, --max-minutes, --patience, --checkpoint-every, --report-samples, --precision, --device, "
                   "--deterministic and "
                   "--data/--data-dir (moved data, same fingerprint) may be given with it")
    p.add_argument("--preset", help="named settings (e.g. mnist-iwae-vae, mnist-best); explicit flags still win")
    p.add_argument("--out", default="runs/latest", help="run directory (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--likelihood", choices=["bernoulli", "gaussian-fixed", "gaussian-learned", "gaussian-shared",
                                               "gaussian-lowrank", "student-t"],
                   help="q(x|z); default follows the data (printed)")
    p.add_argument("--sigma", type=float, help="σ of the gaussian-fixed likelihood (default 1, printed)")
    p.add_argument("--likelihood-options", help="JSON object of likelihood options, e.g. '{\"optimal\": true}'")
    p.add_argument("--latent-dim", type=int, default=20, help="dimension d of the latent z (default: %(default)s; "
                   "tables: chosen from their rows and columns, printed)")
    p.add_argument("--posterior", choices=["diagonal-gaussian", "vmf"], default="diagonal-gaussian",
                   help="p(z|x): diagonal Gaussian with a standard-normal prior (default), or vmf: von Mises-Fisher "
                        "of fixed concentration --kappa on the unit sphere with a uniform prior (constant KL)")
    p.add_argument("--kappa", type=float, help="the fixed concentration κ of --posterior vmf (0 < κ <= 1e4)")
    p.add_argument("--posterior-bn", metavar="gamma=G|tau=T",
                   help="VAE + BN against KL vanishing (Gaussian posterior): gamma=G batch-normalises μ with fixed "
                        "scale G and a learned shift (E[KL] >= d G²/2); tau=T batch-normalises μ and σ with "
                        "γ_μ² + γ_σ² = 1 (E[KL] >= -d/2 ln(1-T))")
    p.add_argument("--free-bits", type=float, default=0.0,
                   help="free bits λ in nats per latent dimension (0: off); the reported loss stays the -ELBO")
    p.add_argument("--architecture", choices=["mlp", "conv"], default="mlp",
                   help="encoder and decoder networks: mlp (default) or conv (images)")
    p.add_argument("--hidden", type=int, nargs="+", default=[400],
                   help="hidden widths (default: 400; tables: chosen from their rows and columns, printed); mlp: one "
                        "per layer, conv: one width (the dense layer)")
    p.add_argument("--activation", default="relu", help="hidden-layer activation (default: %(default)s), e.g. tanh")
    p.add_argument("--epochs", "--epochs-override", type=int, default=10,
                   help="epochs in total (default: %(default)s; tables: chosen from their rows, printed); with "
                        "--resume, the new total (--epochs-override is an old name of this flag)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="examples per step (default: %(default)s; tables: 64; the global batch under torchrun)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default: %(default)s)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine", "exponential"], default="constant",
                   help="constant, cosine (to 0 at the last epoch), or exponential (needs --lr-decay)")
    p.add_argument("--lr-decay", type=float, help="exponential schedule: multiply the learning rate by this factor "
                   "after each epoch (e.g. 0.95); required with --lr-schedule exponential")
    p.add_argument("--objective", choices=["elbo", "iwae"], default="elbo",
                   help="elbo (eq. 24, default) or iwae (the importance-weighted bound with --samples K; tables: "
                        "iwae by their rule, printed)")
    p.add_argument("--samples", type=int, default=1, help="K samples of z per example (eq. 23; default 1; tables "
                   "trained on the IWAE bound: 8)")
    p.add_argument("--kl-warmup", type=float, default=0.0, help="epochs of linear KL warm-up (0: off)")
    p.add_argument("--patience", type=int, default=0, help="early stopping patience in epochs (0: off; default 0, "
                   "tables: on, chosen from their rows, printed)")
    p.add_argument("--select", action="store_true",
                   help="tables: train a small grid of --hidden and --latent-dim around the table's defaults and "
                        "keep the best by the validation split's log-likelihood (every candidate's figure is printed "
                        "and stored in run.json); the test split is never read")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--on-nonfinite", choices=["stop", "skip"], default="stop",
                   help="a NaN/inf loss: stop with the last good checkpoint (default), or skip the step")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="training time budget in minutes (0: none): the steps that fit are estimated from the measured "
                        "step time and the run ends there, with a cosine schedule laid over them; --epochs stays a "
                        "cap")
    p.add_argument("--precision", choices=["float32", "bf16", "fp16", "auto"], default="float32",
                   help="bf16/fp16: the networks' matrix products in bfloat16/float16 during training (pays on GPUs; "
                        "fp16 with a gradient scaler); densities, KL, optimiser and evaluation stay float32. auto: "
                        "time a few float32 and bf16 steps here first and keep the faster (printed, in run.json)")
    _device_arg(p)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms): bitwise-repeatable runs on GPUs, "
                        "slower; pass it again with --resume")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard (extra: tensorboard)")
    p.add_argument("--report-samples", type=int, default=1000,
                   help="K importance samples for report.html at the end (0: no report)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="training seed: initial weights, minibatch order, latent draws (not the data split)")
    p.add_argument("--split-seed", type=_seed, default=0,
                   help="seed of the train/valid/test split of files and digits (default: %(default)s, fixed, so "
                        "runs with different --seed are tested on the same test set; MNIST has a fixed split)")
    p.add_argument("--valid-fraction", type=float, default=0.1,
                   help="share of the examples held out for validation (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of the examples held out for testing (default: %(default)s)")
    p.add_argument("--limit", type=int, help="keep only the first N examples of each split (quick trials)")
    p.add_argument("--label-column", metavar="NAME",
                   help="a CSV column of integer class labels: taken out of the features (a label left in would be "
                        "modelled and scored as data), used to colour the latent pictures")
    # text data only (a .txt file, one sentence per line, or a folder with train/valid/test.txt): bayesvae.text
    p.add_argument("--vocab-size", type=int, help="text: keep the N most frequent training words (default: all); "
                   "the others become <unk>")
    p.add_argument("--max-length", type=int, help="text: the longest sentence in words (default: the longest found, "
                   "at most 1000); longer ones are refused, or cut with --long-sentences cut")
    p.add_argument("--long-sentences", choices=["refuse", "cut"], help="text: what to do with sentences longer "
                   "than --max-length (default: refuse; cut says how many were cut)")
    p.add_argument("--embedding-dim", type=int, help="text: word embedding size (default 256)")
    p.add_argument("--cell", choices=["lstm", "gru"], help="text: recurrent cell of encoder and decoder (default lstm)")
    p.add_argument("--word-dropout", type=float, help="text: replace each decoder input word by <unk> with this "
                   "probability in training (Bowman et al. 2016); the reported loss stays the true -ELBO")
    p.add_argument("--latent-every-step", action="store_true", help="text: z also joins the decoder input at every "
                   "step (default: z sets the initial state only)")
    p.add_argument("--softmax", choices=["full", "adaptive"], help="text: the output layer, both exact and "
                   "normalised: one softmax over the vocabulary (full), or the adaptive softmax (Grave et al. 2017), "
                   "about 2x faster a step on PTB (default: adaptive from 2,000 words, full below)")
    p.add_argument("--no-latent", action="store_true", help="text: the LSTM language model without z (the control "
                   "of every collapse comparison; KL exactly 0, its ELBO is its exact log-probability)")
    p.add_argument("--image-shape", nargs="+", metavar="H W [C]",
                   help="a 2-D .npy/.npz array or CSV of flattened images: each row holds H*W*C pixels in row-major "
                        "H, W, C order (C = 1 or 3); they are prepared and drawn as images. Without it, a square "
                        "side is found (and printed) for 8-bit pixels; 'none' keeps the rows a table")
    p.add_argument("--data-order", choices=["auto", "full", "block"], default="auto",
                   help="the order of the training examples in each epoch, a function of (seed, epoch) so resume "
                        "stays exact: full (a uniform shuffle), block (contiguous blocks of about 1 MiB of the file "
                        "in a shuffled order, the rows of each window of 64 blocks shuffled together: reads in long "
                        "runs for an .npy larger than the page cache), auto (default: block for an .npy streamed "
                        "from disk that does not fit in 80%% of the memory available, full otherwise; printed)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="importance-sampled log-likelihood, ELBO, active units, KL per dimension")
    _run_dir_args(p)
    p.add_argument("--split", choices=["train", "valid", "test"], default="test",
                   help="the split to evaluate (default: %(default)s)")
    p.add_argument("--samples", type=int, default=5000, help="K importance samples (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=500,
                   help="examples evaluated together (default: %(default)s; the figures do not depend on it)")
    p.add_argument("--limit", type=int, help="evaluate only the first N examples")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the importance samples (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--precision", choices=["float32", "bf16"], default="float32",
                   help="bf16: the networks in bfloat16 (faster on GPUs); the mean log-likelihood then differs from "
                        f"float32 by up to {BF16_EVAL_TOLERANCE_NATS} nats (measured: docs/scaling.md)")
    _device_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="draw from the model: PNG grid for images, .npy/.csv otherwise")
    _run_dir_args(p, reads_data=False)
    p.add_argument("-n", type=int, default=64, help="number of samples (default: %(default)s)")
    p.add_argument("--out", required=True, help="output file: .png (images), .npy or .csv; .txt or .tsv (text)")
    p.add_argument("--draw", action="store_true", help="draw x ~ q(x|z) instead of showing E[x|z] (text: sample word "
                   "by word instead of greedy decoding)")
    p.add_argument("--temperature", type=float, help="text with --draw: softmax temperature (default 1)")
    _device_arg(p)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the prior draws (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_sample)

    for name, func, helptext, suffixes in (
        ("reconstruct", cmd_reconstruct, "inputs beside their reconstructions E[x|z=E[z|x]]", ".png/.npy/.csv"),
        ("encode", cmd_encode, "posterior means E[z|x] of a split", ".npy/.csv"),
        ("score", cmd_score, "per-example -log p(x) in nats (anomaly scores)", ".csv/.npy"),
    ):
        p = sub.add_parser(name, help=helptext)
        _run_dir_args(p, run_data=name != "score")
        p.add_argument("--split", choices=["train", "valid", "test"], default="test",
                       help="the split of the run's data to use (default: %(default)s)")
        p.add_argument("--out", required=True, help=f"output file ({suffixes})")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        _device_arg(p)
        if name == "reconstruct":
            p.add_argument("-n", type=int, default=16, help="number of examples (default: %(default)s)")
        if name == "score":
            p.add_argument("--data", help="score this data source (prepared like the run's test split; columns "
                                           "matched by header; refused if the run's preparation cannot apply) "
                                           "instead of a split. The output's index is each example's 0-based row "
                                           "in its file")
            p.add_argument("--samples", type=int, default=1000, help="K importance samples (default: %(default)s)")
            p.add_argument("--seed", type=_seed, default=0,
                           help="seed of the importance samples (default: %(default)s)")
        p.set_defaults(func=func)

    p = sub.add_parser("export", help="write a run's model without optimiser state, for publishing")
    _run_dir_args(p, reads_data=False)
    p.add_argument("--out", required=True, help="a new directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export directory")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("data", help="data sources: fetch, info, convert")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = dsub.add_parser("fetch", help="download a data set into the cache, checksums verified")
    q.add_argument("name", help="mnist")
    q.add_argument("--cache-dir", help="target directory (default: $BAYESVAE_DATA/mnist or ~/.cache/bayesvae/mnist)")
    q.set_defaults(func=cmd_data_fetch)
    q = dsub.add_parser("info", help="load and validate a data source and describe it")
    q.add_argument("source", help="digits, mnist, or a path to a .npy, .npz, .csv file or a folder of images")
    q.add_argument("--data-dir", help="directory holding the MNIST IDX files")
    q.add_argument("--image-shape", nargs="+", metavar="H W [C]",
                   help="rows of flattened images (see train --image-shape)")
    q.set_defaults(func=cmd_data_info)
    q = dsub.add_parser("convert", help="stream a CSV, a folder of images or an .npz into a memory-mappable .npy "
                        "(checked as for training; labels in a sidecar X.labels.npy; SHA-256 in X.npy.sha256)")
    q.add_argument("source", help="a .csv file, a folder of images (subfolders = classes) or an .npz archive")
    q.add_argument("--out", required=True, help="the .npy to write (never replaced without --overwrite)")
    q.add_argument("--label-column", metavar="NAME",
                   help="a CSV column of integer class labels: written to the sidecar X.labels.npy, not the features")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output and its sidecars")
    q.set_defaults(func=cmd_data_convert)
    _add_picture_commands(sub)
    for command, leaf in flags._commands(parser):  # noqa: SLF001 - each option's help says where it applies
        for action in leaf._actions:  # noqa: SLF001
            note = flags.scope_note(command, action.dest) if action.option_strings else ""
            if note and action.help != argparse.SUPPRESS:
                action.help = f"{action.help} {note}" if action.help else note
    return parser


#: CLI option names of the TrainConfig fields a preset may set.
_PRESET_TRAIN_OPTIONS = {"epochs": "epochs", "batch_size": "batch_size", "learning_rate": "lr",
                         "lr_schedule": "lr_schedule", "objective": "objective", "samples": "samples",
                         "kl_warmup_epochs": "kl_warmup", "early_stopping_patience": "patience", "seed": "seed",
                         "precision": "precision", "max_seconds": "max_minutes"}
#: Presets store TrainConfig's units; the CLI option's unit differs for these (value -> option value).
_PRESET_UNITS = {"max_seconds": lambda seconds: seconds / 60.0}


def _apply_preset(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """``train --preset NAME`` sets the defaults of the train options; flags given explicitly still win."""
    from .runs import load_preset

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(argv)
    if not known.preset:
        return
    preset = load_preset(known.preset)
    train_parser = _subparser(parser, "train")
    defaults = {k: v for k, v in preset.get("model", {}).items()}
    unsupported = sorted(set(preset.get("train", {})) - set(_PRESET_TRAIN_OPTIONS))
    if unsupported:
        raise BayesVAEError(f"preset {known.preset!r} sets {unsupported}, which the CLI cannot take")
    defaults.update({_PRESET_TRAIN_OPTIONS[k]: _PRESET_UNITS.get(k, lambda v: v)(v)
                     for k, v in preset.get("train", {}).items()})
    if "likelihood_options" in defaults:
        defaults["likelihood_options"] = json.dumps(defaults["likelihood_options"])
    train_parser.set_defaults(**defaults)


class Terminated(BaseException):
    """SIGTERM outside training: unwinds like KeyboardInterrupt (atomic writes clean up), then exit 143."""


def _exit_on_signals() -> None:
    """SIGINT and SIGTERM end the command at once (training replaces them with a checkpointing stop)."""
    def on_term(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _explicit_dests(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The options the user typed (not defaults, not preset values): parse again with every default of every
    subcommand suppressed, so that only given options appear in the namespace (abbreviations and aliases included)."""
    subs = [p for _, p in flags._commands(parser)]  # noqa: SLF001 - the leaf subparsers
    saved = [(a, a.default) for p in subs for a in p._actions]  # noqa: SLF001 - argparse has no API for this
    saved_defaults = [(p, dict(p._defaults)) for p in subs]  # noqa: SLF001
    try:
        for action, _ in saved:
            if action.option_strings:
                action.default = argparse.SUPPRESS
        for p, _ in saved_defaults:
            p._defaults.clear()  # noqa: SLF001
        namespace = parser.parse_args(argv)
    finally:
        for action, default in saved:
            action.default = default
        for p, defaults in saved_defaults:
            p._defaults.update(defaults)  # noqa: SLF001
    return set(vars(namespace)) - {"command", "debug", "data_command"}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    # argparse has no API for its subparsers: its private attributes, which typeshed types loosely.
    return parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr,index]  # noqa: SLF001


def _version() -> str:
    from . import __version__
    return f"bayesvae {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def _typed_flag(action: argparse.Action, argv: list[str]) -> str:
    """The name of an option as the user typed it (one of its aliases), else its first name."""
    typed = {word.split("=", 1)[0] for word in argv}
    return next((o for o in action.option_strings if o in typed), action.option_strings[0])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.add_argument("--version", action="version", version=_version())
    try:
        _apply_preset(parser, argv)
    except BayesVAEError as err:
        _print(f"error: {err}")
        return EXIT_USAGE
    args = parser.parse_args(argv)
    args.explicit = _explicit_dests(parser, argv)
    args.leaf = f"{args.command} {args.data_command}" if args.command == "data" else args.command
    leaf = dict(flags._commands(parser))[args.leaf]  # noqa: SLF001
    args.flag_of = {a.dest: _typed_flag(a, argv) for a in leaf._actions if a.option_strings}  # noqa: SLF001
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _exit_on_signals()
        with warnings.catch_warnings():  # the library's warnings (a checkpoint chosen in place of a missing
            warnings.simplefilter("always", RuntimeWarning)  # pointer, ...) as one line each, no source line
            warnings.showwarning = _one_line_warning
            return args.func(args)
    except (BayesVAEError, ValueError, FileNotFoundError, PermissionError, FileExistsError, NotADirectoryError,
            IsADirectoryError) as err:
        if args.debug:
            raise
        if ranks.world_size_from_env() > 1:  # every rank says why it exits 2 (rank 0's reason is the first line)
            print(f"error{'' if ranks.rank_from_env() == 0 else f' (rank {ranks.rank_from_env()})'}: {err}",
                  file=sys.stderr, flush=True)
        else:
            _print(f"error: {_as_typed(str(err), args)}")
        return EXIT_USAGE
    except RuntimeError as err:
        if ranks.world_size_from_env() > 1 and _is_lost_peer(err) and not args.debug:
            _lost_rank(args, err)
            return EXIT_IO
        raise
    except OSError as err:  # a full disk, an I/O error: the message names the path; nothing half-written stays
        if isinstance(err, BrokenPipeError):
            return _quiet_broken_pipe()
        if args.debug:
            raise
        text = err.strerror or str(err)
        _print(f"error: {text}" + (f": {err.filename}" if err.filename else ""))
        return EXIT_IO
    except KeyboardInterrupt:
        _print("interrupted: stopped before finishing; no partial output was left")
        return EXIT_SIGINT
    except Terminated:
        _print("terminated: stopped before finishing; no partial output was left")
        return EXIT_SIGTERM
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        ranks.shutdown()


#: Words of gloo's and NCCL's errors when another process of the job is gone.
_LOST_PEER_WORDS = ("connection closed by peer", "connection reset", "broken pipe", "socket timeout", "timed out",
                    "nccl", "gloo", "no route to host", "connection refused")


def _is_lost_peer(err: BaseException) -> bool:
    text = str(err).lower()
    return type(err).__name__ in ("DistBackendError", "DistNetworkError") or any(w in text for w in _LOST_PEER_WORDS)


def _lost_rank(args, err: BaseException) -> None:
    """One rank of a torchrun job lost its peers (one was killed, or its machine went away): say so in two lines,
    with the last committed checkpoint and how to continue (the survivor cannot checkpoint without its peers)."""
    run = getattr(args, "resume", None) or getattr(args, "out", None) or getattr(args, "run_dir", None)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    where = ""
    if args.command == "train" and run and Path(run).is_dir():
        committed = ckpt_list(run)
        where = (f"; the last committed checkpoint is {committed[-1]}: continue with `torchrun ... -m bayesvae train "
                 f"--resume {run}`" if committed else f"; {run} holds no committed checkpoint yet: start again")
    print(f"error (rank {ranks.rank_from_env()}): lost contact with another process of this torchrun job (one was "
          f"killed or failed; torchrun names it): {first}{where}", file=sys.stderr, flush=True)


#: The library's names of values a subcommand's options set, as the user typed them (messages name the flag).
_TYPED_NAMES = (("posterior option 'kappa'", "--kappa"), ("posterior option 'bn_tau'", "--posterior-bn tau"),
                ("posterior option 'bn_gamma'", "--posterior-bn gamma"), ("num_samples must", "--samples must"),
                ("valid_fraction + test_fraction", "--valid-fraction + --test-fraction"),
                ("valid_fraction must", "--valid-fraction must"), ("test_fraction must", "--test-fraction must"),
                ("limit must", "--limit must"), ("batch_size must", "--batch-size must"))


def _as_typed(message: str, args) -> str:
    """A library message with the library's names replaced by the flags that set them (when the flag exists here)."""
    import re

    flags_here = set(getattr(args, "flag_of", {}).values())
    for internal, flag in _TYPED_NAMES:
        if internal in message and flag.split()[0] in flags_here:  # a whole name only ("--limit must" stays)
            message = re.sub(r"(?<![\w-])" + re.escape(internal), flag, message)
    return message


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _print(f"warning: {message}")


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (`evaluate --json | head`): end quietly, as `cat` or `seq` do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
