"""Training speed: bayesvae's trainer against the classic plain PyTorch loop, alternated in one process.

Model: the 784-400-20 ReLU MLP VAE with a Bernoulli decoder, batch 128, Adam 1e-3, dynamic binarisation, MNIST.
The plain loop is the well-known ~60-line example (pytorch/examples' VAE) with the same binarisation.
Epochs alternate (plain, bayesvae, bayesvae with precision=bf16, plain, ...) so all see the same machine
conditions; the figures are the medians of the per-epoch throughputs, and the ratio is taken epoch by epoch. The
floor of one step (matrix products, fused Adam and binarisation, each timed alone) bounds the ratio any trainer
doing the same dense float32 work could reach.

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
        loss = (F.binary_cross_entropy(recon, x, reduction="sum")
                - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item(), n + x.shape[0]
    return n / (time.perf_counter() - start), total / n


def _per_call_ms(fn, repeats: int = 200) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def step_floor_ms(model, batch: torch.Tensor, binarize) -> dict:
    """What one training step cannot go below on this machine, each part timed alone: the matrix products of the
    forward and backward passes (every Linear: y = h W^T, dW = g^T h, dh = g W except for the data layer), one
    fused Adam update of all parameters, and the dynamic binarisation of a batch."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    n = batch.shape[0]
    hs = [torch.randn(n, lin.in_features) for lin in linears]
    gs = [torch.randn(n, lin.out_features) for lin in linears]

    def products():
        for i, (lin, h, g) in enumerate(zip(linears, hs, gs, strict=True)):
            h @ lin.weight.t()
            g.t() @ h
            if i > 0:  # the first layer's input is the data: no gradient needed
                g @ lin.weight

    params = [p.detach().clone() for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    with torch.no_grad():
        parts = {"matmul_ms": _per_call_ms(products), "adam_ms": _per_call_ms(opt.step),
                 "binarize_ms": _per_call_ms(lambda: binarize(batch))}
    parts["total_ms"] = sum(parts.values())
    return parts


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
    model_config = bv.ModelConfig(data_shape=(1, 28, 28), latent_dim=20, hidden=(400,), likelihood="bernoulli")
    config = bv.TrainConfig(epochs=1, batch_size=128, learning_rate=1e-3)
    trainers = {}
    for precision in ("float32", "bf16"):  # the same initial weights for both
        torch.manual_seed(1)
        trainers[precision] = Trainer(bv.build_model(model_config), TrainingObjective("elbo", 1), prepared.train,
                                      dataclasses.replace(config, precision=precision),
                                      batch_transform=prepared.batch_transform)
    model = trainers["float32"].model

    # warm-up (allocator, thread pool) outside the timed epochs
    plain_epoch(plain, plain_opt, X[:1280], 128, 10)

    floor = step_floor_ms(model, prepared.train[:128], prepared.batch_transform)
    rows = []
    for e in range(epochs):
        p_speed, p_loss = plain_epoch(plain, plain_opt, X, 128, max_steps)
        recs = {}
        for precision, trainer in trainers.items():
            trainer.config = dataclasses.replace(trainer.config, epochs=e + 1)
            trainer.fit()
            recs[precision] = trainer.state.history[-1]
        b_speed, h_speed = (X.shape[0] / recs[k]["epoch_seconds"] for k in ("float32", "bf16"))
        rows.append({"epoch": e + 1, "plain_examples_per_second": p_speed, "bayesvae_examples_per_second": b_speed,
                     "ratio": b_speed / p_speed, "plain_loss_nats": p_loss,
                     "bayesvae_loss_nats": recs["float32"]["train_loss"], "bf16_examples_per_second": h_speed,
                     "bf16_ratio": h_speed / p_speed, "bf16_loss_nats": recs["bf16"]["train_loss"]})
        print(f"epoch {e + 1}: plain {p_speed:8.0f} ex/s (loss {p_loss:.2f} nats)   bayesvae {b_speed:8.0f} ex/s "
              f"(loss {recs['float32']['train_loss']:.2f} nats)   ratio {b_speed / p_speed:.2f}   "
              f"[bf16: {h_speed:.0f} ex/s, loss {recs['bf16']['train_loss']:.2f} nats, ratio {h_speed / p_speed:.2f}]",
              flush=True)

    plain_step_ms = 128e3 / statistics.median(r["plain_examples_per_second"] for r in rows)
    ceiling = plain_step_ms / floor["total_ms"]
    print(f"floor of one step, parts timed alone: matrix products {floor['matmul_ms']:.2f} ms + fused Adam "
          f"{floor['adam_ms']:.2f} ms + binarisation {floor['binarize_ms']:.2f} ms = {floor['total_ms']:.2f} ms; "
          f"the plain loop takes {plain_step_ms:.2f} ms a step, so no trainer doing these dense float32 products could "
          f"exceed a ratio of {ceiling:.2f} "
          f"here (target 2.0)", flush=True)
    result = {
        "benchmark": "train_speed", "step_floor_ms": floor, "plain_step_ms": plain_step_ms,
        "ratio_ceiling": ceiling,
        "model": "MLP 784-400-20 ReLU, Bernoulli decoder, batch 128, Adam 1e-3, dynamic binarisation; bayesvae in "
                 "float32 and with precision=bf16 from the same initial weights",
        "epochs": epochs, "train_examples": int(X.shape[0]),
        "plain_examples_per_second": statistics.median(r["plain_examples_per_second"] for r in rows),
        "bayesvae_examples_per_second": statistics.median(r["bayesvae_examples_per_second"] for r in rows),
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "final_plain_loss_nats": rows[-1]["plain_loss_nats"],
        "final_bayesvae_loss_nats": rows[-1]["bayesvae_loss_nats"],
        "bf16_examples_per_second": statistics.median(r["bf16_examples_per_second"] for r in rows),
        "bf16_ratio_median": statistics.median(r["bf16_ratio"] for r in rows),
        "final_bf16_loss_nats": rows[-1]["bf16_loss_nats"],
        "per_epoch": rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "smoke": args.smoke,
    }
    print(f"median: plain {result['plain_examples_per_second']:.0f} ex/s, bayesvae "
          f"{result['bayesvae_examples_per_second']:.0f} ex/s, ratio {result['ratio_median']:.2f} (target >= 2.0); "
          f"final training losses {result['final_plain_loss_nats']:.2f} vs "
          f"{result['final_bayesvae_loss_nats']:.2f} nats; "
          f"bf16 {result['bf16_examples_per_second']:.0f} ex/s, ratio {result['bf16_ratio_median']:.2f}, final loss "
          f"{result['final_bf16_loss_nats']:.2f} nats")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
