"""GPU check (one command, a few minutes on one GPU): what bayesvae does on an accelerator, with the card's name.

1. Training throughput of the speed benchmark's model (MLP 784-400-20, Bernoulli, batch 128, dynamic binarisation)
   with bayesvae's trainer in float32 and bf16 against the plain PyTorch loop, all on the same device, alternated.
2. The K = 5000 importance-sampled log-likelihood of the MNIST test set (all 10,000 images) with the trained model,
   in float32 and with the networks in bf16: the bf16-vs-float32 agreement in nats (mean and largest per example).
3. Peak device memory, and (on CUDA) the CUDA-only tests of the suite (tests/test_distributed.py -m cuda paths).

    python benchmarks/gpu_check.py --data-dir ../shared/data/mnist [--device cuda] [--json out.json]
    python benchmarks/gpu_check.py --device cpu --smoke      # the same code paths, tiny, for the test suite
"""

from __future__ import annotations

import argparse
import datetime
import json
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import torch

import bayesvae as bv
from bayesvae import data as bdata
from bayesvae import distributed as ranks
from bayesvae import runs
from bayesvae.estimators import estimate_log_likelihood
from bayesvae.objectives import TrainingObjective
from bayesvae.training import Trainer

HERE = Path(__file__).resolve().parent


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return runpy.run_path(str(HERE / "bench_memory.py"), run_name="lib")["cpu_info"]()


def plain_throughput(device, X, steps: int) -> float:
    """The plain loop of train_speed.py (pytorch/examples' VAE) on ``device``: examples per second."""
    speed = runpy.run_path(str(HERE / "train_speed.py"), run_name="lib")
    torch.manual_seed(1)
    model = speed["PlainVAE"]().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    Xd = X.to(device)
    speed["plain_epoch"](model, opt, Xd[:1280], 128, 3)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    speed["plain_epoch"](model, opt, Xd, 128, steps)
    _sync(device)
    return steps * 128 / (time.perf_counter() - t0)


def trainer_throughput(device, prepared, precision: str, steps: int) -> tuple[float, Trainer]:
    torch.manual_seed(1)
    model_config = bv.ModelConfig(data_shape=(1, 28, 28), latent_dim=20, hidden=(400,), likelihood="bernoulli")
    model = bv.build_model(model_config).to(device)
    config = bv.TrainConfig(epochs=1, batch_size=128, learning_rate=1e-3, precision=precision)
    n = min(prepared.train.shape[0], steps * 128)
    trainer = Trainer(model, TrainingObjective("elbo", 1), prepared.train[:n], config,
                      batch_transform=prepared.batch_transform)
    warm = Trainer(bv.build_model(model_config).to(device), TrainingObjective("elbo", 1), prepared.train[:1280],
                   config, batch_transform=prepared.batch_transform)
    warm.fit()
    _sync(device)
    t0 = time.perf_counter()
    trainer.fit()
    _sync(device)
    return n / (time.perf_counter() - t0), trainer


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--samples", type=int, default=5000, help="K of the evaluation (default: %(default)s)")
    ap.add_argument("--examples", type=int, default=10000, help="test images evaluated (default: all)")
    ap.add_argument("--steps", type=int, default=465, help="training steps timed per variant (default: one epoch)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (for the test suite; works on the CPU)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the CUDA-only tests")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.samples, args.examples, args.steps = 16, 64, 4
    device = ranks.resolve_device(args.device, announce=print)
    name = device_name(device)
    print(f"device: {device} ({name}); torch {torch.__version__}", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    dataset = bdata.load_dataset("mnist", data_dir=args.data_dir, limit=1280 if args.smoke else None)
    prepared = runs.prepare_data(dataset, "bernoulli")
    X = dataset.train.reshape(dataset.train.shape[0], -1)

    plain = plain_throughput(device, X, args.steps)
    f32, trainer = trainer_throughput(device, prepared, "float32", args.steps)
    bf16, _ = trainer_throughput(device, prepared, "bf16", args.steps)
    print(f"training ({args.steps} steps of 128): plain loop {plain:.0f} ex/s; bayesvae float32 {f32:.0f} ex/s "
          f"(ratio {f32 / plain:.2f}); bayesvae bf16 {bf16:.0f} ex/s (ratio {bf16 / plain:.2f})", flush=True)

    model = cast(bv.VAE, trainer.model.eval())
    x = prepared.test[: args.examples]
    _sync(device)
    t0 = time.perf_counter()
    ll32 = estimate_log_likelihood(model, x, args.samples, seed=0)
    _sync(device)
    t32 = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        ll16 = estimate_log_likelihood(model, x, args.samples, seed=0)
    _sync(device)
    t16 = time.perf_counter() - t0
    diff = (ll16 - ll32).abs()
    print(f"evaluation of {x.shape[0]} test images, K = {args.samples}: float32 NLL {-float(ll32.mean()):.3f} nats "
          f"in {t32:.1f} s; bf16 NLL {-float(ll16.mean()):.3f} nats in {t16:.1f} s; |bf16 - float32|: mean "
          f"{float(diff.mean()):.4f}, largest {float(diff.max()):.4f} nats per example, difference of the means "
          f"{abs(float(ll16.mean() - ll32.mean())):.4f} nats", flush=True)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if peak is not None:
        print(f"peak GPU memory: {peak:.2f} GiB", flush=True)
    tests = None
    if device.type == "cuda" and not args.skip_tests:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x",
                               str(HERE.parent / "tests" / "test_distributed.py"), "-k", "cuda"],
                              capture_output=True, text=True)
        tests = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else f"exit {proc.returncode}"
        print(f"CUDA tests: {tests}", flush=True)
    result = {
        "benchmark": "gpu_check", "device": str(device), "device_name": name, "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "smoke": args.smoke, "steps": args.steps,
        "plain_examples_per_second": plain, "float32_examples_per_second": f32, "bf16_examples_per_second": bf16,
        "float32_ratio": f32 / plain, "bf16_ratio": bf16 / plain,
        "eval_examples": int(x.shape[0]), "eval_samples": args.samples,
        "float32_nll_nats": -float(ll32.mean()), "bf16_nll_nats": -float(ll16.mean()),
        "float32_eval_seconds": t32, "bf16_eval_seconds": t16,
        "bf16_abs_error_mean_nats": float(diff.mean()), "bf16_abs_error_max_nats": float(diff.max()),
        "bf16_mean_difference_nats": abs(float(ll16.mean() - ll32.mean())),
        "peak_gpu_memory_gib": peak, "cuda_tests": tests,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
