"""Training speed: bayesvae's trainer against the classic plain PyTorch loop, alternated in one process.

Model: the 784-400-20 ReLU MLP VAE with a Bernoulli decoder, batch 128, Adam 1e-3, dynamic binarisation, MNIST.
The plain loop is the well-known ~60-line example (pytorch/examples' VAE) with the same binarisation.
Epochs alternate (plain, bayesvae, plain, ...) so both see the same machine conditions; the figures are the medians
of the per-epoch throughputs, and the ratio is taken pair by pair.

    python benchmarks/train_speed.py --data-dir ../shared/data/mnist [--epochs 3] [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import bayesvae as bv
from bayesvae import data as bdata
from bayesvae import runs
from bayesvae.objectives import TrainingObjective
from bayesvae.training import Trainer


class PlainVAE(nn.Module):
    """pytorch/examples' VAE, as people write it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def plain_epoch(model, opt, X: torch.Tensor, batch_size: int, max_steps: int | None) -> tuple[float, float]:
    """One epoch of the classic loop; returns (examples/second, mean loss per example in nats)."""
    perm = torch.randperm(X.shape[0])
    steps = (X.shape[0] + batch_size - 1) // batch_size if max_steps is None else max_steps
    total, n, start = 0.0, 0, time.perf_counter()
    for i in range(steps):
        x = torch.bernoulli(X[perm[i * batch_size:(i + 1) * batch_size]])
        recon, mu, logvar = model(x)
        loss = F.binary_cross_entropy(recon, x, reduction="sum") - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item(), n + x.shape[0]
    return n / (time.perf_counter() - start), total / n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="a few steps on a small slice (for the test suite)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    dataset = bdata.load_dataset("mnist", data_dir=args.data_dir, limit=1280 if args.smoke else None)
    prepared = runs.prepare_data(dataset, "bernoulli")
    X = dataset.train.reshape(dataset.train.shape[0], -1)
    epochs, max_steps = (1, None) if args.smoke else (args.epochs, None)

    plain = PlainVAE()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    model = bv.build_model(bv.ModelConfig(data_shape=(1, 28, 28), latent_dim=20, hidden=(400,), likelihood="bernoulli"))
    config = bv.TrainConfig(epochs=1, batch_size=128, learning_rate=1e-3)
    trainer = Trainer(model, TrainingObjective("elbo", 1), prepared.train, config,
                      batch_transform=prepared.batch_transform)

    # warm-up (allocator, thread pool) outside the timed epochs
    plain_epoch(plain, plain_opt, X[:1280], 128, 10)

    rows = []
    for e in range(epochs):
        p_speed, p_loss = plain_epoch(plain, plain_opt, X, 128, max_steps)
        trainer.config = dataclasses.replace(config, epochs=e + 1)
        trainer.fit()
        rec = trainer.state.history[-1]
        b_speed = X.shape[0] / rec["epoch_seconds"]
        rows.append({"epoch": e + 1, "plain_examples_per_second": p_speed, "bayesvae_examples_per_second": b_speed,
                     "ratio": b_speed / p_speed, "plain_loss_nats": p_loss, "bayesvae_loss_nats": rec["train_loss"]})
        print(f"epoch {e + 1}: plain {p_speed:8.0f} ex/s (loss {p_loss:.2f} nats)   bayesvae {b_speed:8.0f} ex/s "
              f"(loss {rec['train_loss']:.2f} nats)   ratio {b_speed / p_speed:.2f}", flush=True)

    result = {
        "benchmark": "train_speed",
        "model": "MLP 784-400-20 ReLU, Bernoulli decoder, batch 128, Adam 1e-3, dynamic binarisation",
        "epochs": epochs, "train_examples": int(X.shape[0]),
        "plain_examples_per_second": statistics.median(r["plain_examples_per_second"] for r in rows),
        "bayesvae_examples_per_second": statistics.median(r["bayesvae_examples_per_second"] for r in rows),
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "final_plain_loss_nats": rows[-1]["plain_loss_nats"], "final_bayesvae_loss_nats": rows[-1]["bayesvae_loss_nats"],
        "per_epoch": rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "smoke": args.smoke,
    }
    print(f"median: plain {result['plain_examples_per_second']:.0f} ex/s, bayesvae "
          f"{result['bayesvae_examples_per_second']:.0f} ex/s, ratio {result['ratio_median']:.2f} (target >= 2.0); "
          f"final training losses {result['final_plain_loss_nats']:.2f} vs {result['final_bayesvae_loss_nats']:.2f} nats")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
