"""What a 60-minute budget buys: the training step of each candidate recipe for the MNIST table, timed here.

The likelihood table's recipe search (benchmarks/results/recipe_search.json) trades the IWAE bound's k, the width
and the batch size against the epochs that fit in the budget; this prints that exchange rate on the machine at hand,
because it differs between this project's machines (bf16 is about 2x float32 where the CPU has AMX and several times
slower where it is emulated). Each candidate is timed as the trainer runs it (a fresh minibatch drawn, binarised and
stepped), float32 and bf16 alternated in rounds so a drift in the machine's speed hits both alike. Per candidate:
the median step, the epochs a 60-minute budget buys, the ratio to the reference (the 2026-11-26 recipe: k = 5,
float32), and the floor: the step's matrix products alone (forward and backward of every layer, in the candidate's
precision), which no trainer doing the same dense work can go below.

    python benchmarks/recipe_speed.py --data-dir ../shared/data/mnist [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bayesvae as bv
from bayesvae import data as bdata
from bayesvae import runs
from bayesvae.config import TrainConfig
from bayesvae.objectives import TrainingObjective
from bayesvae.training import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py)

#: (hidden widths, k, batch size); latent 50, ReLU, Bernoulli decoder, Adam 1e-3. The first is the reference.
CANDIDATES = [((500, 500), 5, 128), ((500, 500), 10, 128), ((500, 500), 20, 128), ((500, 500), 5, 256),
              ((500, 500), 10, 256), ((1000, 1000), 5, 128), ((500, 500, 500), 10, 128)]
PRECISIONS = ("float32", "bf16")
TRAIN_EXAMPLES, BUDGET_SECONDS = 59_600, 3600.0


def _trainer(prepared, hidden, k, batch_size, precision) -> Trainer:
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(1, 28, 28), latent_dim=50, hidden=hidden,
                                          activation="relu", likelihood="bernoulli"))
    objective = ("iwae", k) if k > 1 else ("elbo", 1)
    config = TrainConfig(epochs=1, batch_size=batch_size, learning_rate=1e-3, objective=objective[0],
                         samples=k, precision=precision)
    return Trainer(model, TrainingObjective(*objective), prepared.train, config,
                   batch_transform=prepared.batch_transform)


def _steps(trainer: Trainer, prepared, batch_size: int, steps: int, offset: int) -> list[float]:
    """Seconds of ``steps`` steps as an epoch runs them: draw a minibatch, binarise, step."""
    n, times = prepared.train.shape[0], []
    for i in range(steps):
        start = time.perf_counter()
        rows = (torch.arange(batch_size) + (offset + i) * batch_size) % n
        batch = prepared.batch_transform(trainer._to_device(prepared.train[rows]))
        trainer.train_step(batch, rows)
        times.append(time.perf_counter() - start)
    return times


def _floor_ms(hidden, k: int, batch_size: int, precision: str, repeats: int) -> float:
    """The matrix products of one step alone: y = h W^T, dW = g^T h and dh = g W for every layer (no dh for the
    data layer); the encoder sees the batch, the decoder k samples of it."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    enc = [784, *hidden, 100]
    dec = [50, *reversed(hidden), 784]
    shapes = [(batch_size, a, b, i > 0) for i, (a, b) in enumerate(zip(enc, enc[1:], strict=False))]
    shapes += [(batch_size * k, a, b, i > 0) for i, (a, b) in enumerate(zip(dec, dec[1:], strict=False))]
    ops = []
    for n, a, b, grad_in in shapes:
        h, w, g = (torch.randn(n, a, dtype=dtype), torch.randn(b, a, dtype=dtype), torch.randn(n, b, dtype=dtype))
        ops.append((h, w, g, grad_in))

    def once():
        for h, w, g, grad_in in ops:
            h @ w.T
            g.T @ h
            if grad_in:
                g @ w

    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per candidate")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per precision per round")
    ap.add_argument("--smoke", action="store_true", help="two candidates, a few steps (for the test suite)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    info = machine.describe()
    print(machine.line(info), flush=True)
    candidates, rounds, steps = (CANDIDATES[:2], 1, 2) if args.smoke else (CANDIDATES, args.rounds, args.steps)
    dataset = bdata.load_dataset("mnist", data_dir=args.data_dir, limit=2048 if args.smoke else None)
    prepared = runs.prepare_data(dataset, "bernoulli")
    rows: list[dict[str, Any]] = []
    for hidden, k, batch_size in candidates:
        trainers = {p: _trainer(prepared, hidden, k, batch_size, p) for p in PRECISIONS}
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for trainer in trainers.values():
            _steps(trainer, prepared, batch_size, 2, 0)  # warm-up: allocations, autocast caches
        for round_ in range(rounds):
            for p, trainer in trainers.items():
                times[p] += _steps(trainer, prepared, batch_size, steps, 2 + round_ * steps)
        for p in PRECISIONS:
            ms = 1000.0 * statistics.median(times[p])
            epoch_seconds = ms / 1000.0 * TRAIN_EXAMPLES / batch_size
            rows.append({"hidden": list(hidden), "k": k, "batch_size": batch_size, "precision": p,
                         "ms_per_step": ms, "examples_per_second": batch_size / (ms / 1000.0),
                         "epoch_seconds": epoch_seconds, "epochs_in_60_minutes": BUDGET_SECONDS / epoch_seconds,
                         "floor_ms_per_step": _floor_ms(hidden, k, batch_size, p, 5 if args.smoke else 20)})
    reference = rows[0]  # k = 5, batch 128, float32: the recipe of 2026-11-26
    print("| hidden | k | batch | precision | ms/step | floor ms | examples/s | epochs in 60 min "
          "| speed vs reference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        r["speed_vs_reference"] = reference["epoch_seconds"] / r["epoch_seconds"]
        print(f"| {'-'.join(map(str, r['hidden']))} | {r['k']} | {r['batch_size']} | {r['precision']} | "
              f"{r['ms_per_step']:.1f} | {r['floor_ms_per_step']:.1f} | {r['examples_per_second']:.0f} | "
              f"{r['epochs_in_60_minutes']:.0f} | {r['speed_vs_reference']:.2f} |", flush=True)
    result = {"benchmark": "recipe_speed", "date": time.strftime("%Y-%m-%d"), "machine": info,
              "smoke": args.smoke, "reference": "hidden 500-500, k = 5, batch 128, float32", "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
