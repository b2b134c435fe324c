"""A small trainer that knows nothing about VAEs.

It maximises an *objective*: a callable ``objective(model, batch, progress) -> dict[str, Tensor[B]]`` whose entry
``"objective"`` holds the per-example values to maximise; every other entry is a per-example metric that is
averaged and logged. The loss is ``-objective.mean()``, negated here and nowhere else.

Exactness of resume: the data are in-memory tensors and the order of epoch e is a permutation drawn from a
generator seeded by (seed, e), so any step can be reproduced from the step counter alone; the global torch RNG
(latent samples, dynamic binarisation) is saved in every checkpoint; the learning rate is a function of the step.
A resumed run therefore ends bit-for-bit where the uninterrupted run ends (on CPU).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import TrainConfig, to_dict
from .errors import CheckpointCorruptError, NonFiniteError

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


class Callback:
    """Hooks with no effect on the arithmetic; override what you need."""

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        pass

    def on_train_epoch_end(self, trainer: "Trainer") -> None:
        """After the epoch's last step, before validation (e.g. to recompute batch-norm statistics)."""

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
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
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_((s2 / n - mean * mean).clamp_min(0.0).to(m.running_var.dtype))
    return len(layers)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch, a function of (seed, epoch) alone (so resume needs no sampler state)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def learning_rate_at(config: TrainConfig, progress: float) -> float:
    """The learning rate after ``progress`` epochs (a float), from the configured schedule."""
    base = config.learning_rate
    if config.lr_schedule == "cosine":
        t = min(1.0, progress / config.epochs)
        low = base * config.lr_min_factor
        return low + (base - low) * 0.5 * (1.0 + math.cos(math.pi * t))
    if config.lr_schedule == "exponential":
        return base * config.lr_decay ** math.floor(progress)
    return base


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
        self.model, self.objective, self.config = model, objective, config
        self.train_data, self.valid_data = train_data, valid_data
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.batch_transform = batch_transform
        self.valid_objective = valid_objective or objective
        self.callbacks = list(callbacks)
        self.run_state = dict(run_state or {})
        self.state = TrainState()
        self.optimizer = _adam(model, config.learning_rate)
        self.stop_requested: bool | int = False
        """Set (to True or a signal number) to stop after the current step with a committed checkpoint."""
        self.last_checkpoint: Path | None = None

    # ----------------------------------------------------------------------------------------------- schedule
    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_data.shape[0] / self.config.batch_size)

    def _set_lr(self) -> float:
        lr = learning_rate_at(self.config, self.state.global_step / self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # ---------------------------------------------------------------------------------------------- one step
    def _autocast(self):
        """bf16 autocast on the parameters' device for ``precision="bf16"``; nothing otherwise."""
        if self.config.precision != "bf16":
            return contextlib.nullcontext()
        device = next((p.device.type for p in self.model.parameters()), "cpu")
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

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

    def train_step(self, batch: torch.Tensor, batch_idx: torch.Tensor) -> dict[str, float]:
        """One optimiser step; raises NonFiniteError before the step when the loss or a gradient is not finite."""
        self.model.train()
        lr = self._set_lr()
        progress = self.state.global_step / self.steps_per_epoch
        # Buffers a forward pass updates (running statistics) are restored if the step is skipped.
        buffers = [b.clone() for b in self.model.buffers()] if self.config.nonfinite_policy == "skip" else None
        with self._autocast():
            out = self.objective(self.model, batch, progress)
        if self.config.precision == "bf16":  # the loss and the logged terms in float32
            out = {k: v.float() for k, v in out.items()}
        loss = -out["objective"].mean()  # the one place where the objective is negated
        self.optimizer.zero_grad(set_to_none=True)
        try:
            self._check_terms(out, loss, batch_idx)
            loss.backward()
            self._check_gradients()
        except NonFiniteError:
            self.optimizer.zero_grad(set_to_none=True)
            if buffers is not None:
                with torch.no_grad():
                    torch._foreach_copy_(list(self.model.buffers()), buffers)
            if self.config.nonfinite_policy == "stop" or self.state.consecutive_skips >= self.config.max_skipped_steps:
                raise  # "skip" allows max_skipped_steps bad steps in a row; the next one stops
            self.state.skipped_steps += 1
            self.state.consecutive_skips += 1
            return {"skipped": 1.0}
        self.optimizer.step()
        self.state.consecutive_skips = 0
        metrics = {k: float(v.detach().mean()) for k, v in out.items() if k != "objective"}
        metrics.setdefault("loss", float(loss.detach()))  # an objective may report its own (e.g. unweighted) loss
        metrics["lr"] = lr
        return metrics

    # --------------------------------------------------------------------------------------------- an epoch
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation metrics under a fixed seed (comparable across epochs; the training RNG is untouched)."""
        if self.valid_data is None or self.valid_data.shape[0] == 0:
            return {}
        self.model.eval()
        sums: dict[str, float] = {}
        n = self.valid_data.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 7919)
            for i in range(0, n, self.config.eval_batch_size):
                xb = self.valid_data[i : i + self.config.eval_batch_size]
                out = self.valid_objective(self.model, xb, float(self.config.epochs))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.double().sum())
        self.model.train()
        means = {k: v / n for k, v in sums.items()}
        objective = means.pop("objective")
        means.setdefault("loss", -objective)
        return means

    def _run_epoch(self) -> dict[str, float]:
        cfg, st = self.config, self.state
        order = epoch_order(self.train_data.shape[0], cfg.seed, st.epoch)
        first, start = st.step_in_epoch, time.perf_counter()
        for b in range(first, self.steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            batch = self.train_data[idx]
            if self.batch_transform is not None:
                batch = self.batch_transform(batch)
            metrics = self.train_step(batch, idx)
            st.step_in_epoch, st.global_step = b + 1, st.global_step + 1
            if "skipped" not in metrics:
                st.epoch_count += 1
                for k, v in metrics.items():
                    st.epoch_sums[k] = st.epoch_sums.get(k, 0.0) + v
            metrics["examples_per_second"] = (b + 1 - first) * cfg.batch_size / max(1e-9, time.perf_counter() - start)
            for cb in self.callbacks:
                cb.on_step_end(self, metrics)
            if cfg.checkpoint_every_steps and st.global_step % cfg.checkpoint_every_steps == 0 and b + 1 < self.steps_per_epoch:
                self.save()
            if self.stop_requested:
                raise TrainingInterrupted(self.save(), self._stop_signal())
        means = {f"train_{k}": v / max(1, st.epoch_count) for k, v in st.epoch_sums.items()}
        if "train_lr" in means:
            means["train_lr"] = self.optimizer.param_groups[0]["lr"]
        means["epoch_seconds"] = time.perf_counter() - start
        st.epoch_sums, st.epoch_count = {}, 0
        return means

    def fit(self) -> TrainState:
        """Train until ``config.epochs`` epochs are done (or early stopping); resumable at any step."""
        cfg, st = self.config, self.state
        while st.epoch < cfg.epochs and not st.stopped_early:
            record: dict[str, Any] = {"epoch": st.epoch + 1}
            record.update(self._run_epoch())
            for cb in self.callbacks:
                cb.on_train_epoch_end(self)
            record.update({f"valid_{k}": v for k, v in self.validate().items()})
            record["global_step"] = st.global_step
            st.epoch, st.step_in_epoch = st.epoch + 1, 0
            st.train_seconds += record["epoch_seconds"]
            improved = self._update_best(record)
            if cfg.max_seconds and st.train_seconds + record["epoch_seconds"] > cfg.max_seconds:
                st.stopped_early = True  # the next epoch would overrun the time budget
            st.history.append(record)
            self.save(best=improved)
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
            if self.stop_requested:
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
    def state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON state) describing the whole training state."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_tensors, opt_json = ckpt.encode_state(self.optimizer.state_dict())
        tensors.update({f"optimizer.{k}": v for k, v in opt_tensors.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        state = {
            "trainer": self.state.__dict__.copy(),
            "train_config": to_dict(self.config),
            "optimizer": opt_json,
            **self.run_state,
        }
        return tensors, state

    def save(self, best: bool = False) -> Path | None:
        if self.run_dir is None:
            return None
        tensors, state = self.state_dicts()
        tags = ("last", "best") if best else ("last",)
        self.last_checkpoint = ckpt.save_checkpoint(self.run_dir, self.state.global_step, tensors, state, tags=tags)
        return self.last_checkpoint

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore everything ``state_dicts`` saved; refuses when a part is missing (never re-initialises)."""
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_sd, strict=True)
        missing = [k for k in ("trainer", "optimizer") if k not in state] + (
            ["rng.torch"] if "rng.torch" not in tensors else [])
        if missing:
            raise CheckpointCorruptError(f"checkpoint lacks {missing}; cannot resume exactly (start a new run)")
        opt_tensors = {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")}
        self.optimizer.load_state_dict(ckpt.decode_state(opt_tensors, state["optimizer"]))
        self.state = TrainState(**state["trainer"])
        torch.set_rng_state(tensors["rng.torch"])
