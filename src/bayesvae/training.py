"""A small trainer that knows nothing about VAEs.

It maximises an *objective*: a callable ``objective(model, batch, progress) -> dict[str, Tensor[B]]`` whose entry
``"objective"`` holds the per-example values to maximise; every other entry is a per-example metric that is
averaged and logged. The loss is ``-objective.mean()``, negated here and nowhere else.

Exactness of resume: the data are indexable (tensors, or splits on disk) and the order of epoch e is a permutation
drawn from a generator seeded by (seed, e) (a full shuffle, or the block shuffle of :mod:`bayesvae.orders` for a
file beyond the page cache), so any step can be reproduced from the step counter alone; the global
torch RNG (latent samples, dynamic binarisation) is saved in every checkpoint; the learning rate is a function of
the step.
A resumed run therefore ends bit-for-bit where the uninterrupted run ends (on CPU).

Devices and ranks come from :mod:`bayesvae.distributed`. The model's device is where batches go: the training split
stays there when it fits a quarter of the free device memory (:data:`DEVICE_DATA_FRACTION`), otherwise each batch is
gathered on the CPU (read from disk for a split that stays there), pinned and copied with ``non_blocking``. Under
torchrun every rank takes its contiguous share of every global batch of the same epoch order, DistributedDataParallel
averages the gradients, one all-reduce per step agrees on "a loss is non-finite" and "stop was requested" before
``backward`` (and carries the logged sums), and rank 0 alone writes checkpoints while the others wait at a barrier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed as ranks
from . import draws, orders
from .arrays import as_tensor
from .config import TrainConfig, to_dict
from .errors import CheckpointCorruptError, ConfigError, NonFiniteError

__all__ = ["Trainer", "TrainState", "Callback", "TrainingInterrupted", "epoch_order", "learning_rate_at",
           "recalibrate_batch_norm"]

Objective = Callable[[nn.Module, torch.Tensor, float], dict[str, torch.Tensor]]


class TrainingInterrupted(Exception):
    """Raised after a stop was requested (e.g. SIGTERM) and the last checkpoint was committed."""

    def __init__(self, checkpoint_path: Path | None, signum: int | None = None):
        super().__init__(f"training stopped; last checkpoint: {checkpoint_path}")
        self.checkpoint_path, self.signum = checkpoint_path, signum


@dataclass
class TrainState:
    """Counters and history: everything besides tensors that a checkpoint must restore."""

    epoch: int = 0
    """Epochs completed."""
    step_in_epoch: int = 0
    """Optimiser steps (or skipped steps) completed within the current epoch."""
    global_step: int = 0
    best_valid_loss: float = math.inf
    epochs_without_improvement: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0
    """Wall time spent in training epochs (kept across resumes, for ``max_seconds``)."""
    epoch_sums: dict[str, float] = field(default_factory=dict)
    """Running sums of this epoch's step metrics (checkpointed, so a mid-epoch resume logs the same means)."""
    epoch_count: int = 0
    planned_steps: int = 0
    """With a time budget (``max_seconds``): the step at which the run and its learning-rate schedule end, estimated
    from the measured step time and re-estimated as the run goes (0: not yet planned; the schedule spans
    ``epochs``). Checkpointed, so a resumed run continues the same plan."""
    timed_steps: int = 0
    timed_seconds: float = 0.0
    """Steps timed for the plan and their seconds (each process's first steps are not timed: they pay for
    allocations and cold caches)."""


class Callback:
    """Hooks with no effect on the arithmetic; override what you need."""

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        pass

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """After the epoch's last step, before validation (e.g. to recompute batch-norm statistics)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        pass


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches, forward: Callable[[nn.Module, torch.Tensor], Any]) -> int:
    """Set the running statistics of every BatchNorm layer of ``model`` to the exact population statistics (mean
    and biased variance, accumulated in float64) of its inputs over ``batches``, the "precise BN" of Wu & Johnson
    (2021). The momentum averages lag behind a network that is still changing; these do not, so evaluation mode
    normalises the data exactly as a batch of the whole training set would. Returns the number of layers set."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    sums: dict[int, list] = {id(m): [0, 0.0, 0.0] for m in layers}

    def collect(module, inputs):
        x = inputs[0].detach().double()
        x = x.transpose(0, 1).reshape(x.shape[1], -1)  # [C, N * spatial]
        acc = sums[id(module)]
        acc[0] += x.shape[1]
        acc[1] = acc[1] + x.sum(1)
        acc[2] = acc[2] + x.pow(2).sum(1)

    hooks = [m.register_forward_pre_hook(collect) for m in layers]
    was_training = model.training
    model.eval()  # forward with the current running statistics: the hooks only read the layers' inputs
    try:
        for xb in batches:
            forward(model, xb)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for m in layers:
        n, s1, s2 = sums[id(m)]
        if n == 0:
            continue
        mean = s1 / n
        assert m.running_mean is not None and m.running_var is not None  # track_running_stats
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_((s2 / n - mean * mean).clamp_min(0.0).to(m.running_var.dtype))
    return len(layers)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch, a function of (seed, epoch) alone (so resume needs no sampler state): the full
    shuffle, :func:`bayesvae.orders.full_order`."""
    return orders.full_order(n, seed, epoch)


class _Prefetch:
    """The batches of an epoch in order, the next ``depth`` read ahead by one background thread when the split is
    read from disk (a :class:`bayesvae.arrays.Rows`), so reading overlaps the step; in-memory tensors are indexed
    when asked. Reading takes no random numbers (binarisation and dequantisation happen in the step), so the batches,
    and resume, are the same with and without it. ``advise_rows`` > 0 (the block order): the same thread also asks
    the kernel to read the file's runs of the next ``advise_rows`` positions of the order into the page cache
    (:meth:`bayesvae.arrays.Rows.will_need`), a window ahead of the batches, so the disk reads the next window in
    long runs while the current one is trained on."""

    def __init__(self, data, order: torch.Tensor, batch_size: int, first: int, stop: int, share, depth: int = 2,
                 advise_rows: int = 0):
        self.data, self.order, self.batch_size, self.share = data, order, batch_size, share
        self.next, self.stop = first, stop
        self.pending: dict[int, Any] = {}
        self.pool = None
        self.advise_rows = advise_rows if hasattr(data, "will_need") else 0
        self.advised = first * batch_size
        if not isinstance(data, torch.Tensor) and hasattr(data, "read"):
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bayesvae-prefetch")
            self.depth = depth

    def _advise(self, b: int) -> None:
        """Keep the page-cache advice a window (``advise_rows``) ahead of batch ``b``."""
        assert self.pool is not None
        while self.advise_rows and self.advised < min(len(self.order), (b + 1) * self.batch_size + self.advise_rows):
            chunk = self.order[self.advised : self.advised + self.advise_rows].cpu().numpy()
            self.pool.submit(self.data.will_need, chunk)
            self.advised += self.advise_rows

    def _indices(self, b: int):
        idx = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        return idx, self.share(idx)

    def take(self, b: int):
        """(global batch indices, this rank's indices, its examples) of step ``b``."""
        if self.pool is None:
            idx, mine = self._indices(b)
            return idx, mine, self.data[mine]
        while self.next < min(self.stop, b + 1 + self.depth):
            self._advise(self.next)
            i, m = self._indices(self.next)
            self.pending[self.next] = (i, m, self.pool.submit(self.data.__getitem__, m))
            self.next += 1
        idx, mine, future = self.pending.pop(b)
        return idx, mine, future.result()

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def learning_rate_at(config: TrainConfig, progress: float, horizon: float | None = None) -> float:
    """The learning rate after ``progress`` epochs (a float), from the configured schedule. ``horizon``: the epochs
    a total-dependent schedule (cosine) spans; default ``config.epochs`` (a time budget plans a shorter one)."""
    base = config.learning_rate
    if config.lr_schedule == "cosine":
        t = min(1.0, progress / (horizon or config.epochs))
        low = base * config.lr_min_factor
        return low + (base - low) * 0.5 * (1.0 + math.cos(math.pi * t))
    if config.lr_schedule == "exponential":
        return base * config.lr_decay ** math.floor(progress)
    return base


_LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: fp16 steps in a row whose gradients may overflow (each halves the loss scale) before training stops.
_FP16_MAX_OVERFLOWS = 30

#: Block order: whether the prefetch thread also asks the kernel (posix_fadvise WILLNEED) for the next window's runs
#: of the file. Off: on this project's machines it did not pay (``make bench-stream``: an evicted 1 GiB file read in
#: the block order at 0.76 x dd with it, 0.98 x without; the kernel's own read-around already follows the blocks).
WINDOW_ADVICE = False

#: Keep the training split on a GPU when it takes at most this fraction of the device's free memory.
DEVICE_DATA_FRACTION = 0.25


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """A batch as float32: 8-bit data (uint8) become k / 255 here, after the batch was drawn (4x less memory)."""
    if batch.dtype == torch.uint8:
        return batch.to(torch.float32).div_(255.0)
    return batch


def _fits_on_device(data, device: torch.device) -> bool:
    if device.type != "cuda" or not isinstance(data, torch.Tensor):
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return data.numel() * data.element_size() <= DEVICE_DATA_FRACTION * free


class _ObjectiveModule(nn.Module):
    """The model and its objective as one module, so that DistributedDataParallel sees the forward pass (a VAE is
    used through its distribution-valued methods, not through ``forward``)."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: torch.Tensor, progress: float):
        return self.objective(self.model, batch, progress)


def _adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where this build has it (one pass over the parameters instead of ~10)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr)


class Trainer:
    """Adam on ``-objective.mean()`` over minibatches of an in-memory tensor, with checkpoints and validation.

    Args:
        model: any ``nn.Module``.
        objective: see the module docstring.
        train_data: Tensor[N, ...], already validated.
        config: the optimisation settings.
        valid_data: optional Tensor[M, ...]; its loss drives ``best`` checkpoints and early stopping.
        run_dir: where checkpoints go (None: no checkpoints).
        batch_transform: applied to each training batch (e.g. a fresh binarisation, using the global RNG).
        valid_objective: objective for validation (default: ``objective``), evaluated under a fixed seed.
        run_state: JSON-able data stored in every checkpoint (model/data configuration, for ``load``).
    """

    def __init__(self, model: nn.Module, objective: Objective, train_data: torch.Tensor, config: TrainConfig, *,
                 valid_data: torch.Tensor | None = None, run_dir: str | Path | None = None,
                 batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 valid_objective: Objective | None = None, callbacks: Sequence[Callback] = (),
                 run_state: dict | None = None):
        if train_data.shape[0] == 0:
            raise ValueError("train_data is empty; give at least one example")
        self.world_size, self.rank = ranks.world_size(), ranks.rank()
        if config.batch_size % self.world_size:
            raise ConfigError(f"--batch-size {config.batch_size} is the global batch and must divide by the "
                              f"{self.world_size} processes; use a multiple of {self.world_size}")
        self.model, self.objective = model, objective
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if config.data_order == "auto" or (config.data_order == "block" and not (config.block_rows and
                                                                                 config.window_blocks)):
            choice = orders.resolve(config.data_order, train_data, config.block_rows, config.window_blocks)
            config = dataclasses.replace(config, data_order=choice.order, block_rows=choice.block_rows,
                                         window_blocks=choice.window_blocks)
        if _fits_on_device(train_data, self.device):
            train_data = train_data.to(self.device)
        self.train_data, self.valid_data, self.config = train_data, valid_data, config
        self._step_module: nn.Module = _ObjectiveModule(model, objective)
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # buffers (the prior's constants) are equal on every rank: no per-step broadcast
            sync: dict[str, Any] = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
                DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False})
            self._step_module = DistributedDataParallel(self._step_module, device_ids=ids, **sync)
        self._stop_agreed = False
        self.world_size_changed = False
        """Set by ``load_state`` when the checkpoint was written by another number of ranks."""
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.batch_transform = batch_transform
        self.valid_objective = valid_objective or objective
        self.callbacks = list(callbacks)
        self.run_state = dict(run_state or {})
        self.state = TrainState()
        self.optimizer = _adam(model, config.learning_rate)
        if config.precision == "auto":
            raise ConfigError("precision 'auto' is resolved before training (bayesvae.precision.choose_precision); "
                              "the trainer needs float32, bf16 or fp16")
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        """fp16 only: the loss scale (its state is checkpointed)."""
        self.stop_requested: bool | int = False
        """Set (to True or a signal number) to stop after the current step with a committed checkpoint."""
        self.last_checkpoint: Path | None = None
        self.clock: Callable[[], float] = time.perf_counter
        """The clock of epoch times and of the time budget (tests give a fake one)."""
        self._process_steps = 0
        self.epoch_order: Callable[[int, int, int], torch.Tensor] = epoch_order
        """The data order of an epoch, a function of (n, seed, epoch) (text: length-bucketed batches)."""
        if config.data_order == "block":
            self.epoch_order = functools.partial(orders.block_order, block_rows=config.block_rows,
                                                 window_blocks=config.window_blocks)

    # ----------------------------------------------------------------------------------------------- schedule
    #: Steps of each process that are not timed for the budget plan, and how often the plan is re-estimated.
    BUDGET_WARMUP_STEPS, BUDGET_REPLAN_STEPS = 5, 25

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_data.shape[0] / self.config.batch_size)

    @property
    def horizon_steps(self) -> int:
        """The step at which training and a total-dependent learning-rate schedule end: ``epochs`` x steps per
        epoch, or fewer when a time budget's plan says fewer steps fit."""
        total = self.config.epochs * self.steps_per_epoch
        return min(total, self.state.planned_steps) if self.config.max_seconds and self.state.planned_steps else total

    def _budget_reached(self) -> bool:
        return bool(self.config.max_seconds and self.state.planned_steps
                    and self.state.global_step >= self.state.planned_steps)

    @property
    def budget_spent(self) -> bool:
        """The time budget ended the run: its plan's steps (fewer than the epoch cap's) are done, or its seconds are
        spent. A plan as long as ``epochs`` allows ends with the epoch cap, which is no budget's doing."""
        cap = self.config.epochs * self.steps_per_epoch
        return bool(self.config.max_seconds
                    and ((self._budget_reached() and self.state.planned_steps < cap)
                         or self.state.train_seconds >= self.config.max_seconds))

    def _time_step(self, seconds: float, elapsed: float) -> None:
        """Account one step's time and, with a budget, re-estimate how many steps fit: after the warm-up, then every
        ``BUDGET_REPLAN_STEPS`` steps. ``elapsed``: training seconds of the whole run so far."""
        st = self.state
        self._process_steps += 1
        if self._process_steps <= self.BUDGET_WARMUP_STEPS:
            return
        st.timed_steps += 1
        st.timed_seconds += seconds
        if not self.config.max_seconds:
            return
        if self._process_steps == self.BUDGET_WARMUP_STEPS + 1 or st.global_step % self.BUDGET_REPLAN_STEPS == 0:
            per_step = st.timed_seconds / st.timed_steps
            fits = st.global_step + max(0, math.floor((self.config.max_seconds - elapsed) / max(per_step, 1e-9)))
            plan = max(st.global_step, min(fits, self.config.epochs * self.steps_per_epoch))
            st.planned_steps = ranks.broadcast_int(plan) if self.world_size > 1 else plan

    def _set_lr(self) -> float:
        lr = learning_rate_at(self.config, self.state.global_step / self.steps_per_epoch,
                              self.horizon_steps / self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # ---------------------------------------------------------------------------------------------- one step
    def _autocast(self):
        """bf16/fp16 autocast on the parameters' device for ``precision="bf16"``/``"fp16"``; nothing otherwise."""
        if self.config.precision not in _LOW_PRECISION:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_LOW_PRECISION[self.config.precision])

    def _fp16_overflow(self) -> bool:
        """fp16: unscale the gradients; True when they overflowed (the scaler then skips the step and lowers its
        scale: routine, not an error, unless it keeps happening)."""
        scaler = self.scaler
        assert scaler is not None  # fp16 has one
        scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return False
        scaler.step(self.optimizer)  # skipped by the scaler (it saw the inf), then the scale backs off
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_steps += 1
        self.state.consecutive_skips += 1
        if self.state.consecutive_skips > max(_FP16_MAX_OVERFLOWS, self.config.max_skipped_steps):
            raise NonFiniteError(f"fp16 gradients overflowed in {self.state.consecutive_skips} steps in a row (scale "
                                 f"now {scaler.get_scale():g}); train with --precision bf16 or float32")
        return True

    def _check_terms(self, out: dict[str, torch.Tensor], loss: torch.Tensor, batch_idx: torch.Tensor) -> None:
        if torch.isfinite(loss):
            return
        bad = [name for name, v in out.items() if not torch.isfinite(v).all()] or ["objective"]
        term = next((n for n in bad if n not in ("objective", "loss")), bad[0])  # name the culprit term
        rows = (~torch.isfinite(out[term])).nonzero().flatten()
        examples = batch_idx[rows[:10]].tolist()
        raise NonFiniteError(
            f"non-finite {term} at step {self.state.global_step} (epoch {self.state.epoch + 1}), "
            f"examples {examples}{' ...' if rows.numel() > 10 else ''}; no update was applied. Check the data "
            f"for NaN/inf, lower the learning rate, or use a likelihood with a variance floor"
        )

    def _check_gradients(self) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if torch.isfinite(norm):
            clip = self.config.grad_clip
            if clip > 0 and norm > clip:  # clip with the norm already computed (one pass over the gradients)
                torch._foreach_mul_(grads, clip / (float(norm) + 1e-6))
            return
        names = [n for n, p in self.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        raise NonFiniteError(
            f"non-finite gradient at step {self.state.global_step} (epoch {self.state.epoch + 1}) in "
            f"{names[:5]}; no update was applied. Lower the learning rate or set grad_clip"
        )

    def _agree(self, out: dict[str, torch.Tensor], n_global: int) -> tuple[bool, dict[str, float]]:
        """One all-reduce per step: whether any rank has a non-finite term, whether any rank was asked to stop,
        and the global sums of the logged terms. Returns (any_nonfinite, global means)."""
        keys = sorted(out)
        local = torch.stack([out[k].detach().double().sum() for k in keys])
        flags = torch.tensor([0.0 if bool(torch.isfinite(local).all()) else 1.0, 1.0 if self.stop_requested else 0.0],
                             dtype=torch.float64, device=local.device)
        sums = ranks.all_reduce_sum(torch.cat([flags, local.nan_to_num(0.0, 0.0, 0.0)]))
        self._stop_agreed = bool(sums[1] > 0)
        means = {k: float(v) / n_global for k, v in zip(keys, sums[2:].tolist(), strict=True)}
        return bool(sums[0] > 0), means

    def train_step(self, batch: torch.Tensor, batch_idx: torch.Tensor, n_global: int | None = None) -> dict[str, float]:
        """One optimiser step; raises NonFiniteError before the step when the loss or a gradient is not finite.

        Under several ranks ``batch`` is this rank's share of a global batch of ``n_global`` examples: the loss is
        scaled so that DDP's average of the ranks' gradients is the gradient of the global batch's mean."""
        self.model.train()
        lr = self._set_lr()
        progress = self.state.global_step / self.steps_per_epoch
        # Buffers a forward pass updates (running statistics) are restored if the step is skipped.
        buffers = [b.clone() for b in self.model.buffers()] if self.config.nonfinite_policy == "skip" else None
        with self._autocast():
            out = self._step_module(batch, progress)
        if self.config.precision in _LOW_PRECISION:  # the loss and the logged terms in float32
            out = {k: v.float() for k, v in out.items()}
        distributed = self.world_size > 1
        if distributed:
            n_global = n_global or batch.shape[0] * self.world_size
            loss = -out["objective"].sum() * (self.world_size / n_global)
            bad_anywhere, means = self._agree(out, n_global)
        else:
            loss = -out["objective"].mean()  # the one place where the objective is negated
        self.optimizer.zero_grad(set_to_none=True)
        try:
            if distributed and bad_anywhere and torch.isfinite(loss):
                raise NonFiniteError(f"non-finite loss on another rank at step {self.state.global_step} (epoch "
                                     f"{self.state.epoch + 1}); no update was applied on any rank")
            self._check_terms(out, loss, batch_idx)
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            if self.scaler is not None and self._fp16_overflow():
                return {"skipped": 1.0}
            self._check_gradients()  # under DDP the gradients are already averaged: every rank sees the same
        except NonFiniteError as err:
            self.optimizer.zero_grad(set_to_none=True)
            if buffers is not None:
                with torch.no_grad():
                    torch._foreach_copy_(list(self.model.buffers()), buffers)
            if self.config.nonfinite_policy == "stop":
                raise
            if self.state.consecutive_skips >= self.config.max_skipped_steps:  # "skip" allows max_skipped_steps
                raise NonFiniteError(  # bad steps in a row; the next one stops, and says it was the limit
                    f"{self.state.consecutive_skips + 1} non-finite steps in a row with --on-nonfinite skip, which "
                    f"skips at most {self.config.max_skipped_steps} in a row; the last: {err}. The model diverged: "
                    "resume from the last checkpoint with a lower learning rate, or check the data") from None
            self.state.skipped_steps += 1
            self.state.consecutive_skips += 1
            return {"skipped": 1.0}
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.state.consecutive_skips = 0
        if distributed:
            metrics = {k: v for k, v in means.items() if k != "objective"}
            metrics.setdefault("loss", -means["objective"])
        else:
            metrics = {k: float(v.detach().mean()) for k, v in out.items() if k != "objective"}
            metrics.setdefault("loss", float(loss.detach()))  # an objective may report its own (e.g. unweighted) loss
        metrics["lr"] = lr
        return metrics

    # --------------------------------------------------------------------------------------------- an epoch
    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch drawn on the CPU onto the model's device (pinned, non-blocking on CUDA), then as float32."""
        batch = as_tensor(batch)  # a split on disk is read here, one batch at a time
        if batch.device != self.device:
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            else:
                batch = batch.to(self.device)
        return as_float(batch)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation metrics under a fixed seed (comparable across epochs; the training RNG is untouched).
        Under several ranks each rank validates its shard and the sums are added up."""
        if self.valid_data is None or self.valid_data.shape[0] == 0:
            return {}
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        n = self.valid_data.shape[0]
        mine = ranks.shard(n)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.config.seed + 7919 + 104_729 * self.rank)
            for i in range(mine.start, mine.stop, self.config.eval_batch_size):
                xb = self._to_device(self.valid_data[i : min(mine.stop, i + self.config.eval_batch_size)])
                out = self.valid_objective(self.model, xb, float(self.config.epochs))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.double().sum()
        self.model.train()
        if self.world_size > 1:
            keys = sorted(self._valid_keys(sums))
            local = torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64).to(self.device) for k in keys])
            sums = dict(zip(keys, ranks.all_reduce_sum(local), strict=True))
        means = {k: float(v) / n for k, v in sums.items()}
        objective = means.pop("objective")
        means.setdefault("loss", -objective)
        return means

    def _valid_keys(self, sums: dict) -> list[str]:
        """The metric names every rank reports (a rank with an empty shard learns them from one example)."""
        if sums:
            return list(sums)
        assert self.valid_data is not None  # validation runs only with validation data
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            out = self.valid_objective(self.model, self._to_device(self.valid_data[:1]), float(self.config.epochs))
        return list(out)

    def _rank_share(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch (the whole batch for one process)."""
        if self.world_size == 1:
            return idx
        part = ranks.shard(idx.shape[0])
        return idx[part.start : part.stop]

    def _stop_now(self) -> bool:
        """Stop after this step: the agreed flag under several ranks (one rank may see SIGTERM a step later)."""
        return self._stop_agreed if self.world_size > 1 else bool(self.stop_requested)

    def _run_epoch(self) -> dict[str, float]:
        cfg, st = self.config, self.state
        order = self.epoch_order(self.train_data.shape[0], cfg.seed, st.epoch)
        if self.train_data.device != order.device:
            order = order.to(self.train_data.device)
        first, start = st.step_in_epoch, self.clock()
        last = start
        advise = cfg.block_rows * cfg.window_blocks if cfg.data_order == "block" and WINDOW_ADVICE else 0
        with _Prefetch(self.train_data, order, cfg.batch_size, first, self.steps_per_epoch, self._rank_share,
                       advise_rows=advise) as ahead:
            for b in range(first, self.steps_per_epoch):
                if self._budget_reached():
                    break  # the budget's plan ends mid-epoch: validate and checkpoint what was trained
                last = self._train_batch(b, first, start, last, ahead)
        means = {f"train_{k}": v / max(1, st.epoch_count) for k, v in st.epoch_sums.items()}
        if "train_lr" in means:
            means["train_lr"] = self.optimizer.param_groups[0]["lr"]
        means["epoch_seconds"] = self.clock() - start
        st.epoch_sums, st.epoch_count = {}, 0
        return means

    def _train_batch(self, b: int, first: int, start: float, last: float, ahead: _Prefetch) -> float:
        """Step ``b`` of the epoch on its batch (read ahead by ``ahead``); returns the clock after it."""
        cfg, st = self.config, self.state
        step_start = self.clock()
        idx, mine, raw = ahead.take(b)
        part = ranks.shard(idx.shape[0]) if self.world_size > 1 else range(idx.shape[0])
        # the step's draws from (seed, step) for the whole global batch; this rank keeps its rows (bayesvae.draws)
        with draws.step_draws(draws.StepDraws(cfg.seed, st.global_step, idx.shape[0], slice(part.start, part.stop),
                                              self.device)):
            batch = self._to_device(raw)
            if self.batch_transform is not None:
                batch = self.batch_transform(batch)
            metrics = (self.train_step(batch, mine) if self.world_size == 1
                       else self.train_step(batch, mine, idx.shape[0]))
        st.step_in_epoch, st.global_step = b + 1, st.global_step + 1
        now = self.clock()
        st.train_seconds += now - last  # per step, so a checkpoint in mid-epoch keeps the time spent
        self._time_step(now - step_start, st.train_seconds)
        if "skipped" not in metrics:
            st.epoch_count += 1
            for k, v in metrics.items():
                st.epoch_sums[k] = st.epoch_sums.get(k, 0.0) + v
        metrics["examples_per_second"] = (b + 1 - first) * cfg.batch_size / max(1e-9, now - start)
        for cb in self.callbacks:
            cb.on_step_end(self, metrics)
        if (cfg.checkpoint_every_steps and st.global_step % cfg.checkpoint_every_steps == 0
                and b + 1 < self.steps_per_epoch):
            self.save()
        if self._stop_now():
            raise TrainingInterrupted(self.save(), self._stop_signal())
        return now

    def fit(self) -> TrainState:
        """Train until ``config.epochs`` epochs are done (or early stopping); resumable at any step.

        For its duration, floats below 1.2e-38 (denormals) are flushed to zero on the CPU: the gradients and Adam
        moments of a VAE's inactive latent units sink into that range as training goes on, and CPU arithmetic on
        denormals is slow (an epoch of the mnist-best model late in training: 17.2 s with them, 9.7 s flushed,
        the same losses to 1e-3 nats). The setting is process-wide and torch has no getter for it, so whether it
        was already on is read off one denormal product, and it is switched off afterwards only if it was off."""
        already = float(torch.tensor([1e-40]) * 1.0) == 0.0
        flushed = self.device.type == "cpu" and not already and torch.set_flush_denormal(True)
        try:
            return self._fit()
        finally:
            if flushed:
                torch.set_flush_denormal(False)

    def _fit(self) -> TrainState:
        cfg, st = self.config, self.state
        while st.epoch < cfg.epochs and not st.stopped_early:
            record: dict[str, Any] = {"epoch": st.epoch + 1}
            record.update(self._run_epoch())
            for cb in self.callbacks:
                cb.on_train_epoch_end(self)
            record.update({f"valid_{k}": v for k, v in self.validate().items()})
            record["global_step"] = st.global_step
            st.epoch, st.step_in_epoch = st.epoch + 1, 0
            improved = self._update_best(record)
            if self.budget_spent:
                st.stopped_early = True  # the budget's plan is done (or the budget is spent)
            stop = False
            if self.world_size > 1:  # wall-clock decisions and late signals: every rank follows the same verdict
                st.stopped_early, stop = ranks.all_reduce_flags(st.stopped_early, bool(self.stop_requested))
            st.history.append(record)
            self.save(best=improved)
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
            if stop or (self.world_size == 1 and self.stop_requested):
                raise TrainingInterrupted(self.last_checkpoint, self._stop_signal())
        return st

    def _stop_signal(self) -> int | None:
        return self.stop_requested if type(self.stop_requested) is int else None

    def _update_best(self, record: dict[str, Any]) -> bool:
        st, patience = self.state, self.config.early_stopping_patience
        value = record.get("valid_loss", record.get("train_loss", math.inf))
        if value < st.best_valid_loss:
            st.best_valid_loss, st.epochs_without_improvement = value, 0
            return True
        st.epochs_without_improvement += 1
        if patience and st.epochs_without_improvement >= patience:
            st.stopped_early = True
        return False

    # -------------------------------------------------------------------------------------------- checkpoints
    def _rng_tensors(self) -> dict[str, torch.Tensor]:
        """The random state: the CPU generator (``rng.torch``) and, on CUDA, the device's (``rng.cuda``); under
        several ranks every rank's, gathered (``rng.ranks.torch``/``rng.ranks.cuda``: one row per rank)."""
        out = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            out["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world_size > 1:
            for key in list(out):
                out[key.replace("rng.", "rng.ranks.")] = torch.stack(ranks.gather_tensors(out[key]))
        return out

    def state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON state) describing the whole training state (tensors on the CPU: device-independent).
        Under several ranks every rank must call it (the random states are gathered)."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_tensors, opt_json = ckpt.encode_state(self.optimizer.state_dict())
        tensors.update({f"optimizer.{k}": v for k, v in opt_tensors.items()})
        tensors.update(self._rng_tensors())
        state = {
            "trainer": self.state.__dict__.copy(),
            "train_config": to_dict(self.config),
            "optimizer": opt_json,
            "world_size": self.world_size,
            "device_type": self.device.type,
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **self.run_state,
        }
        return tensors, state

    def save(self, best: bool = False) -> Path | None:
        """Commit a checkpoint: rank 0 writes, the other ranks wait for it at a barrier (with a time-out)."""
        run_dir = self.run_dir
        if run_dir is None:
            return None
        tensors, state = self.state_dicts()
        tags = ("last", "best") if best else ("last",)
        path = ranks.run_on_main(lambda: ckpt.save_checkpoint(run_dir, self.state.global_step, tensors, state,
                                                              tags=tags))
        self.last_checkpoint = path or (Path(run_dir) / ckpt.CHECKPOINTS / f"step-{self.state.global_step:08d}")
        return self.last_checkpoint

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore everything ``state_dicts`` saved (from CPU tensors, onto the model's device); refuses when a part
        is missing (never re-initialises). With another number of ranks than the checkpoint's, training continues
        from the same step with fresh per-rank random streams (``self.world_size_changed`` says so)."""
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_sd, strict=True)
        missing = [k for k in ("trainer", "optimizer") if k not in state] + (
            ["rng.torch"] if "rng.torch" not in tensors else [])
        if missing:
            raise CheckpointCorruptError(f"checkpoint lacks {missing}; cannot resume exactly (start a new run)")
        opt_tensors = {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")}
        self.optimizer.load_state_dict(ckpt.decode_state(opt_tensors, state["optimizer"]))
        self.state = TrainState(**state["trainer"])
        if self.scaler is not None:
            if "grad_scaler" not in state:
                raise CheckpointCorruptError("checkpoint of an fp16 run lacks the gradient scaler's state")
            self.scaler.load_state_dict(state["grad_scaler"])
        saved_world = int(state.get("world_size", 1))
        self.world_size_changed = saved_world != self.world_size
        if self.world_size_changed:
            torch.manual_seed(self.config.seed * 1_000_003 + self.state.global_step * 7919 + self.rank)
            return
        cpu = tensors["rng.ranks.torch"][self.rank] if self.world_size > 1 else tensors["rng.torch"]
        torch.set_rng_state(cpu.clone())  # a copy: a row view has a storage offset the setter ignores
        if self.device.type == "cuda":
            key = "rng.ranks.cuda" if self.world_size > 1 else "rng.cuda"
            if key in tensors:
                state_t = tensors[key][self.rank] if self.world_size > 1 else tensors[key]
                torch.cuda.set_rng_state(state_t.clone(), self.device)
