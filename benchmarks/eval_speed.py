"""Evaluation speed: importance-sampled log p(x) with K = 5000 over the MNIST test set.

Model: the 784-400-20 ReLU MLP VAE with a Bernoulli decoder, trained briefly here (the cost of evaluation does not
depend on how well the model is trained) or loaded from ``--run``. Prints the wall time and peak memory of
``estimate_log_likelihood`` on the whole test set, and compares it with a naive per-example loop (one example at a
time, its K samples decoded together, a plain logsumexp) on a subset: the two must agree to 1e-4 nats, draw for draw.

    python benchmarks/eval_speed.py --data-dir ../shared/data/mnist [--samples 5000] [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time

import torch
from torch.distributions import Bernoulli, Normal

import bayesvae as bv
from bayesvae import data as bdata
from bayesvae import estimators, runs
from bayesvae.objectives import TrainingObjective
from bayesvae.training import Trainer


def naive_log_likelihood(model, x: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """The textbook loop, independent of bayesvae's densities: one example at a time, its K samples decoded
    together, every log-density from ``torch.distributions``, a float64 logsumexp. Only the draws are shared
    with the estimator (per-example seeds seed + i), so the two must agree draw for draw."""
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            xi = x[i:i + 1].flatten(1)
            q = model.posterior(x[i:i + 1])
            z = q.sample((num_samples,), generator=torch.Generator().manual_seed(seed + i))  # [K, 1, d]
            logits = model.decoder(z.reshape(num_samples, -1)).reshape(num_samples, 1, -1)
            log_px = Bernoulli(logits=logits).log_prob(xi).sum(-1)
            log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_qz = Normal(q.mean, q.stddev).log_prob(z).sum(-1)
            out.append(torch.logsumexp((log_px + log_pz - log_qz).double(), 0) - math.log(num_samples))
    return torch.cat(out)


def matmul_floor_seconds(model, num_samples: int, repeats: int = 5) -> float:
    """Seconds per image for the decoder's matrix products alone (K x d -> K x hidden -> K x 784, at the
    chunk size the estimator uses): what no implementation of the float32 estimator can go below here."""
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    chunk = max(1, min(num_samples, estimators._CHUNK_ELEMENTS // linears[-1].out_features))
    hs = [torch.randn(chunk, lin.in_features) for lin in linears]
    weights = [lin.weight for lin in linears]
    with torch.no_grad():
        for h, w in zip(hs, weights, strict=True):
            h @ w.t()
        start = time.perf_counter()
        for _ in range(repeats):
            for _ in range(math.ceil(num_samples / chunk)):
                for h, w in zip(hs, weights, strict=True):
                    h @ w.t()
    return (time.perf_counter() - start) / repeats


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--run", help="evaluate this run's best checkpoint instead of training a fresh model")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--naive-examples", type=int, default=20)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.samples, args.naive_examples, args.train_epochs = 50, 4, 1

    torch.manual_seed(0)
    dataset = bdata.load_dataset("mnist", data_dir=args.data_dir, limit=1000 if args.smoke else None)
    prepared = runs.prepare_data(dataset, "bernoulli")
    if args.run:
        model = bv.load(args.run)
    else:
        model = bv.build_model(bv.ModelConfig(data_shape=(1, 28, 28), latent_dim=20, hidden=(400,)))
        Trainer(model, TrainingObjective(), prepared.train, bv.TrainConfig(epochs=args.train_epochs),
                batch_transform=prepared.batch_transform).fit()
    model.eval()
    x = prepared.test
    rss_before = _peak_rss_mib()

    start = time.perf_counter()
    ll = bv.estimate_log_likelihood(model, x, args.samples, seed=1234)
    seconds = time.perf_counter() - start
    peak = _peak_rss_mib()
    print(f"estimate_log_likelihood: {x.shape[0]} test images, K = {args.samples}: {seconds:.1f} s "
          f"({x.shape[0] / seconds:.1f} images/s), peak RSS {peak:.0f} MiB (before: {rss_before:.0f} MiB); "
          f"test NLL {-ll.mean():.3f} nats", flush=True)

    floor = matmul_floor_seconds(model, args.samples) * x.shape[0]
    print(f"the decoder's matrix products alone, extrapolated to the test set: {floor:.1f} s "
          f"({floor / seconds:.0%} of the estimator's time; target 150 s)", flush=True)

    sub = x[: args.naive_examples]
    start = time.perf_counter()
    naive = naive_log_likelihood(model, sub, args.samples, seed=1234)
    naive_seconds = time.perf_counter() - start
    start = time.perf_counter()
    bv.estimate_log_likelihood(model, sub, args.samples, seed=1234)
    ours_sub_seconds = time.perf_counter() - start
    max_diff = float((naive - ll[: args.naive_examples]).abs().max())
    naive_full = naive_seconds / sub.shape[0] * x.shape[0]
    print(f"naive per-example loop on {sub.shape[0]} images: {naive_seconds:.2f} s (extrapolated to the test set: "
          f"{naive_full:.0f} s); bayesvae on the same subset {ours_sub_seconds:.2f} s; "
          f"speed ratio (naive / bayesvae, full-set rate) {naive_full / seconds:.2f}; "
          f"max |difference| {max_diff:.2e} nats (must be <= 1e-4)")
    result = {
        "benchmark": "eval_speed", "test_images": int(x.shape[0]), "num_samples": args.samples,
        "seconds": seconds, "images_per_second": x.shape[0] / seconds, "peak_rss_mib": peak,
        "test_nll_nats": float(-ll.mean()), "naive_examples": int(sub.shape[0]), "naive_seconds": naive_seconds,
        "naive_seconds_extrapolated": naive_full, "ratio_naive_over_bayesvae": naive_full / seconds,
        "max_abs_difference_nats": max_diff, "target_seconds": 150, "matmul_floor_seconds": floor,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(), "smoke": args.smoke,
    }
    if max_diff > 1e-4:
        raise SystemExit(f"the estimator disagrees with the naive loop by {max_diff:.2e} nats")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
