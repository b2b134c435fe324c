"""``--precision auto``: time a few training steps in float32 and in bf16 on this machine and keep the faster.

bf16 autocast pays where the hardware has bf16 arithmetic (GPUs; CPUs with AVX-512 BF16 or AMX) and costs several
times float32's step where it is emulated (AVX2-only CPUs), so the choice is measured where the run happens, not
guessed. Densities, KL and evaluation stay float32 either way (see ``TrainConfig.precision``).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from collections.abc import Callable

import torch

from . import distributed as ranks
from .config import TrainConfig
from .errors import ConfigError

__all__ = ["choose_precision", "CANDIDATES"]

#: What ``auto`` chooses between (fp16 needs a loss scaler and pays only on GPUs: ask for it by name).
CANDIDATES = ("float32", "bf16")
#: Timed steps per candidate, in alternating rounds (after two untimed warm-up steps each).
ROUNDS, STEPS_PER_ROUND = 3, 2


def _probe_step_seconds(trainer, batch: torch.Tensor, index: torch.Tensor, steps: int) -> list[float]:
    """Seconds of each of ``steps`` optimiser steps of ``trainer`` on one batch."""
    times = []
    for _ in range(steps):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        start = trainer.clock()
        trainer.train_step(batch, index)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        times.append(trainer.clock() - start)
    return times


def choose_precision(model: torch.nn.Module, objective, train_data, config: TrainConfig, *,
                     batch_transform: Callable | None = None,
                     measure: Callable = _probe_step_seconds) -> tuple[str, dict]:
    """(the faster of float32 and bf16, a JSON-able record of the measurement and the reason).

    Each candidate trains a copy of ``model`` on the first batch of ``train_data`` (the model, the optimiser and
    the global random state are left as they were); bf16 is chosen only if its median step was faster.
    """
    from .training import Trainer  # the probes are real trainer steps

    if ranks.world_size() > 1:
        raise ConfigError("--precision auto measures one process; under torchrun pass float32 or bf16 (measure once "
                          "with a single process: `bayesvae train --precision auto ...` prints the choice)")
    n = min(config.batch_size, train_data.shape[0])
    index = torch.arange(n)
    probes: dict[str, tuple] = {}
    times: dict[str, list[float]] = {p: [] for p in CANDIDATES}
    with torch.random.fork_rng(devices=[] if not torch.cuda.is_available() else None):
        for precision in CANDIDATES:
            cfg = dataclasses.replace(config, precision=precision, max_seconds=0.0, nonfinite_policy="skip")
            probe = Trainer(copy.deepcopy(model), objective, train_data[:n], cfg)
            batch = probe._to_device(train_data[index])
            if batch_transform is not None:
                batch = batch_transform(batch)
            probes[precision] = (probe, batch)
            measure(probe, batch, index, 2)  # warm-up: allocations, autocast caches
        for _ in range(ROUNDS):  # alternate, so a drift in the machine's speed hits both alike
            for precision, (probe, batch) in probes.items():
                times[precision] += measure(probe, batch, index, STEPS_PER_ROUND)
    ms = {p: 1000.0 * statistics.median(t) for p, t in times.items()}
    chosen = "bf16" if ms["bf16"] < ms["float32"] else "float32"
    reason = (f"bf16 {ms['bf16']:.2f} ms/step vs float32 {ms['float32']:.2f} ms/step (median of "
              f"{ROUNDS * STEPS_PER_ROUND} steps each): " + (
                  f"bf16 is {ms['float32'] / ms['bf16']:.2f}x faster here" if chosen == "bf16"
                  else "bf16 is not faster here, so float32"))
    return chosen, {"chosen": chosen, "ms_per_step": ms, "reason": reason}
