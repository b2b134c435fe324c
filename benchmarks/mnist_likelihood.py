"""The MNIST likelihood table: test NLL under the dynamic-binarisation protocol, IS with K = 5000.

Protocol (../shared/notes/evaluation.md): 59,600 / 400 / 10,000; training images re-binarised every minibatch; test
images binarised once with a fixed seed; the checkpoint is chosen on the 400 validation images only (``best``);
the test NLL is -log p(x) estimated with K = 5000 importance samples, in nats per image.

Train a preset within a time budget and evaluate it, or evaluate an existing run:

    python benchmarks/mnist_likelihood.py --preset mnist-best --minutes 60 --out runs/mnist-best
    python benchmarks/mnist_likelihood.py --evaluate runs/mnist-best
    python benchmarks/mnist_likelihood.py --smoke            # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import bayesvae as bv

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py)
from bayesvae import runs
from bayesvae.config import TrainConfig, from_dict, to_dict


def train_preset(preset_name: str, minutes: float, out: str, data_dir: str, limit: int | None = None,
                 epochs: int | None = None) -> float:
    """Train the preset with a budget of ``minutes``; returns the wall-clock minutes of the whole training call
    (validation and checkpoints included, which the budget does not count)."""
    preset = runs.load_preset(preset_name)
    train = {**preset["train"], "max_seconds": 60.0 * minutes}
    if epochs is not None:
        train["epochs"] = epochs
    start = time.perf_counter()
    runs.train(runs.DataSpec("mnist", data_dir=data_dir, limit=limit), out=out, overwrite=True,
               train_config=from_dict(TrainConfig, train), **preset["model"])
    wall = (time.perf_counter() - start) / 60
    print(f"trained {preset_name} in {wall:.1f} min (budget {minutes} min)", flush=True)
    return wall


def evaluate_test_split(run_dir: str, num_samples: int, limit: int | None = None) -> tuple[runs.LoadedRun, dict]:
    """The protocol's test figures of a run's ``best`` checkpoint (seed 0, timed), and the loaded run."""
    run = runs.load_run(run_dir, "best")
    x = run.prepared().test
    if limit:
        x = x[:limit]
    torch.manual_seed(0)
    start = time.perf_counter()
    result = bv.estimators.evaluate(run.model, x, num_samples)
    assert result is not None  # one process
    result["eval_seconds"] = time.perf_counter() - start
    return run, result


def evaluate_run(run_dir: str, num_samples: int, limit: int | None = None) -> dict:
    run, result = evaluate_test_split(run_dir, num_samples, limit)
    history = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    result.update({
        "run_dir": str(run_dir), "checkpoint": str(run.checkpoint), "model_config": to_dict(run.model_config),
        "train_config": to_dict(run.train_config), "epochs_trained": len(history),
        "train_minutes": sum(r["epoch_seconds"] for r in history) / 60.0,
        "curve": [{k: r.get(k) for k in ("epoch", "train_loss", "valid_loss", "epoch_seconds")} for r in history],
        "best_valid_loss": min(r["valid_loss"] for r in history),
    })
    for key in ("active_unit_variances", "kl_per_dimension_nats"):
        result.pop(key)
    if "precision_choice" in run.state:  # precision auto: what was measured and chosen at the start of training
        result["precision_choice"] = run.state["precision_choice"]
    print(f"{run_dir}: {len(history)} epochs in {result['train_minutes']:.1f} min; test NLL {result['nll_nats']:.2f} "
          f"± {result['nll_nats_stderr']:.2f} nats (IS, K = {num_samples}, {result['num_examples']} images), "
          f"ELBO {result['elbo_nats']:.2f}, active units {result['active_units']}/{result['latent_dim']}; "
          f"evaluation {result['eval_seconds']:.0f} s", flush=True)
    return result


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", help="train this preset first (mnist-best, mnist-iwae-vae)")
    ap.add_argument("--minutes", type=float, default=60.0, help="training time budget")
    ap.add_argument("--out", default="runs/mnist", help="run directory for --preset")
    ap.add_argument("--evaluate", nargs="*", default=[], help="run directories to evaluate")
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    info = machine.describe()
    print(machine.line(info), flush=True)
    limit = None
    if args.smoke:
        args.preset, args.samples, limit = args.preset or "mnist-iwae-vae", 20, 300
    targets, wall = list(args.evaluate), {}
    if args.preset:
        wall[args.out] = train_preset(args.preset, args.minutes, args.out, args.data_dir, limit=limit,
                                      epochs=1 if args.smoke else None)
        targets.append(args.out)
    results = [evaluate_run(t, args.samples, limit) for t in targets]
    for result in results:
        if result["run_dir"] in wall:
            result["train_command_minutes"] = wall[result["run_dir"]]
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpu": info, "date": time.strftime("%Y-%m-%d"),
            "protocol": "dynamic binarisation, 59600/400/10000, IS K samples"}
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "mnist_likelihood", **meta, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
